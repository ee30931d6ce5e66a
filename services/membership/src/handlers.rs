//! The Membership rpcs: worker registration and heartbeats, and the shard
//! map changes the control plane asks for (placement, resharding steps,
//! moves, removal). Each checks its request against the rows as they are,
//! then publishes through `publish.rs`.

use freshet_errors::ErrorCode;
use freshet_metastore::{MetastoreError, SealedSegmentRow, ShardRow};
use freshet_proto::v1::membership_server::Membership;
use freshet_proto::v1::*;
use freshet_types::{ShardState, Voters};
use tonic::{Request, Response, Status};

use crate::failover;
use crate::placement;
use crate::publish::Change;
use crate::reconfigure;
use crate::service::store_error;
use crate::silences::{lease_granted, HeartbeatRecord};
use crate::subscribe::EventStream;
use crate::MembershipService;

#[tonic::async_trait]
impl Membership for MembershipService {
    async fn register_worker(
        &self,
        request: Request<RegisterWorkerRequest>,
    ) -> Result<Response<RegisterWorkerResponse>, Status> {
        let request = request.into_inner();
        if request.worker_id.is_empty()
            || request.address.is_empty()
            || request.availability_zone.is_empty()
        {
            return Err(ErrorCode::InvalidArgument
                .status("worker_id, availability_zone and address are required"));
        }
        let previous_disk = self
            .inner
            .store
            .upsert_worker(
                &request.worker_id,
                &request.availability_zone,
                &request.address,
                &request.disk_id,
                request.disk_confirmed,
            )
            .await
            .map_err(store_error)?;
        tracing::info!(
            worker_id = request.worker_id,
            az = request.availability_zone,
            address = request.address,
            "worker registered"
        );
        // A replaced disk: every copy the worker held is gone. It is told
        // which, and rebuilds them before they vote or lead. Answered on
        // every registration with this disk until one confirms it (the
        // worker makes its id durable only after marking the copies, then
        // registers again), so a lost answer is answered again.
        let replaced = previous_disk
            .is_some_and(|previous| !previous.is_empty() && previous != request.disk_id)
            && !request.disk_id.is_empty();
        let lost_copies = if replaced {
            let lost: Vec<LostCopy> = self
                .inner
                .store
                .shards_on_worker(&request.worker_id)
                .await
                .map_err(store_error)?
                .into_iter()
                .filter(|row| {
                    row.leader_worker_id == request.worker_id
                        || row.replica_worker_ids.contains(&request.worker_id)
                        || row.voters.contains(&request.worker_id)
                })
                .map(|row| LostCopy {
                    shard: Some(ShardKey {
                        stream_uid: row.stream_uid,
                        shard_id: row.shard_id,
                    }),
                    segment: row.segment_index,
                })
                .collect();
            tracing::warn!(
                worker_id = request.worker_id,
                lost = lost.len(),
                "worker came back with another disk: its copies are rebuilt before they vote"
            );
            lost
        } else {
            Vec::new()
        };
        failover::heard_from(&self.inner, &request.worker_id);
        // A restarted worker may come back on a new address: republish its
        // shards so routes follow it — and give the shards it leads a new
        // epoch: a restarted leader has forgotten which batches it sent its
        // replicas but failed to write itself, so it must not write again
        // at an epoch whose offsets they may hold with other records (the
        // new epoch makes them drop such a tail). Done on every
        // registration, so a failed republish is repaired by the next one.
        self.republish_worker_shards(&request.worker_id)
            .await
            .map_err(store_error)?;
        Ok(Response::new(RegisterWorkerResponse { lost_copies }))
    }

    async fn heartbeat(
        &self,
        request: Request<HeartbeatRequest>,
    ) -> Result<Response<HeartbeatResponse>, Status> {
        let worker_id = request.into_inner().worker_id;
        let in_postgres = match self.inner.store.heartbeat(&worker_id).await {
            Ok(false) => return Ok(Response::new(HeartbeatResponse::default())),
            Ok(true) => true,
            // Postgres unreachable: nothing can fail over meanwhile (that
            // needs Postgres), so a worker heard from before may keep
            // leading — if the timer records this heartbeat.
            Err(error) if failover::was_heard(&self.inner, &worker_id) => {
                tracing::warn!("heartbeat from {worker_id} not recorded: {error}");
                false
            }
            Err(error) => return Err(store_error(error)),
        };
        let on_timer = failover::heard_from(&self.inner, &worker_id);
        let record = HeartbeatRecord {
            in_postgres,
            on_timer,
            being_deposed: failover::is_being_deposed(&self.inner, &worker_id),
            // Every change committed so far — a failover of this worker's
            // shards included — must reach the worker before its new lease
            // counts; while a commit's outcome is unknown, so is that head.
            head_uncertain: self
                .inner
                .head_uncertain
                .load(std::sync::atomic::Ordering::Acquire),
        };
        if !lease_granted(record) {
            return Ok(Response::new(HeartbeatResponse {
                known: true,
                ..HeartbeatResponse::default()
            }));
        }
        let lease_min_version = self
            .inner
            .head_version
            .load(std::sync::atomic::Ordering::Acquire);
        Ok(Response::new(HeartbeatResponse {
            known: true,
            lease_duration_micros: i64::try_from(self.inner.lease_duration.as_micros())
                .unwrap_or(i64::MAX),
            lease_min_version,
        }))
    }

    async fn list_workers(
        &self,
        _request: Request<ListWorkersRequest>,
    ) -> Result<Response<ListWorkersResponse>, Status> {
        let workers = self.inner.store.list_workers().await.map_err(store_error)?;
        Ok(Response::new(ListWorkersResponse {
            workers: workers
                .iter()
                .map(|w| Worker {
                    worker_id: w.worker_id.clone(),
                    availability_zone: w.availability_zone.clone(),
                    address: w.address.clone(),
                    alive: self.alive(w),
                })
                .collect(),
        }))
    }

    async fn place_shards(
        &self,
        request: Request<PlaceShardsRequest>,
    ) -> Result<Response<PlaceShardsResponse>, Status> {
        let request = request.into_inner();
        let stream = self
            .inner
            .store
            .get_stream_by_uid(request.stream_uid)
            .await
            .map_err(store_error)?
            .ok_or_else(|| {
                ErrorCode::ResourceNotFound
                    .status(format!("stream {} does not exist", request.stream_uid))
            })?;
        let rows = self.placed_rows(&stream, &request.shards).await?;
        let entries = self
            .publish(&stream, rows, Change::Place)
            .await
            .map_err(store_error)?;
        Ok(Response::new(PlaceShardsResponse {
            entries: entries.into_iter().map(|e| self.stamp(e)).collect(),
        }))
    }

    async fn remove_stream(
        &self,
        request: Request<RemoveStreamRequest>,
    ) -> Result<Response<RemoveStreamResponse>, Status> {
        let stream_uid = request.into_inner().stream_uid;
        let Some(stream) = self
            .inner
            .store
            .get_stream_by_uid(stream_uid)
            .await
            .map_err(store_error)?
        else {
            return Ok(Response::new(RemoveStreamResponse {}));
        };
        let shards = self
            .inner
            .store
            .shards_of(stream_uid)
            .await
            .map_err(store_error)?;
        if shards.is_empty() {
            self.remove_consumers_of_shardless(stream_uid)
                .await
                .map_err(store_error)?;
        } else {
            self.publish(&stream, shards, Change::Remove)
                .await
                .map_err(store_error)?;
        }
        Ok(Response::new(RemoveStreamResponse {}))
    }

    async fn close_shards(
        &self,
        request: Request<CloseShardsRequest>,
    ) -> Result<Response<CloseShardsResponse>, Status> {
        let request = request.into_inner();
        let (stream, rows) = self.live_stream_and_shards(request.stream_uid).await?;
        let mut changes = Vec::with_capacity(request.shard_ids.len());
        for shard_id in &request.shard_ids {
            let row = rows
                .iter()
                .find(|r| &r.shard_id == shard_id)
                .ok_or_else(|| {
                    ErrorCode::ResourceNotFound.status(format!("shard {shard_id} does not exist"))
                })?;
            match row.state {
                // Asked again after a lost answer: already being sealed.
                ShardState::Closing => changes.push((row.clone(), Change::Republish)),
                ShardState::Open => changes.push((
                    ShardRow {
                        state: ShardState::Closing,
                        close_generation: row.close_generation + 1,
                        ..row.clone()
                    },
                    Change::BeginClosing,
                )),
                ShardState::Closed => {
                    return Err(ErrorCode::ResourceInUse
                        .status(format!("shard {shard_id} is already closed")))
                }
            }
        }
        Ok(Response::new(CloseShardsResponse {
            entries: self.publish_reshard(&stream, changes).await?,
        }))
    }

    async fn reopen_shards(
        &self,
        request: Request<ReopenShardsRequest>,
    ) -> Result<Response<ReopenShardsResponse>, Status> {
        let request = request.into_inner();
        let (stream, rows) = self.live_stream_and_shards(request.stream_uid).await?;
        let changes: Vec<(ShardRow, Change)> = rows
            .into_iter()
            .filter(|r| r.state == ShardState::Closing && request.shard_ids.contains(&r.shard_id))
            .map(|r| {
                (
                    ShardRow {
                        state: ShardState::Open,
                        close_generation: r.close_generation + 1,
                        ..r
                    },
                    Change::Reopen,
                )
            })
            .collect();
        Ok(Response::new(ReopenShardsResponse {
            entries: self.publish_reshard(&stream, changes).await?,
        }))
    }

    async fn complete_reshard(
        &self,
        request: Request<CompleteReshardRequest>,
    ) -> Result<Response<CompleteReshardResponse>, Status> {
        let request = request.into_inner();
        let (stream, rows) = self.live_stream_and_shards(request.stream_uid).await?;
        let mut changes = Vec::new();
        for sealed in &request.sealed {
            let row = rows
                .iter()
                .find(|r| r.shard_id == sealed.shard_id)
                .ok_or_else(|| {
                    ErrorCode::ResourceNotFound
                        .status(format!("shard {} does not exist", sealed.shard_id))
                })?;
            if row.close_generation != sealed.close_generation {
                return Err(ErrorCode::Conflict.status(format!(
                    "shard {} was reopened or closed again since its seal (close generation {}, not {})",
                    sealed.shard_id, row.close_generation, sealed.close_generation
                )));
            }
            changes.push((
                ShardRow {
                    state: ShardState::Closed,
                    ending_offset: Some(sealed.ending_offset),
                    ..row.clone()
                },
                Change::FinishClosing,
            ));
        }
        let children = self.placed_rows(&stream, &request.children).await?;
        changes.extend(children.into_iter().map(|row| (row, Change::Place)));
        Ok(Response::new(CompleteReshardResponse {
            entries: self.publish_reshard(&stream, changes).await?,
        }))
    }

    async fn relocate_shard(
        &self,
        request: Request<RelocateShardRequest>,
    ) -> Result<Response<RelocateShardResponse>, Status> {
        let request = request.into_inner();
        let (stream, rows) = self.live_stream_and_shards(request.stream_uid).await?;
        let store = &self.inner.store;
        let row = rows
            .into_iter()
            .find(|r| r.shard_id == request.shard_id)
            .ok_or_else(|| {
                ErrorCode::ResourceNotFound
                    .status(format!("shard {} does not exist", request.shard_id))
            })?;
        if row.state != ShardState::Closing
            || row.epoch != request.epoch
            || row.close_generation != request.close_generation
        {
            return Err(ErrorCode::ResourceInUse.status(format!(
                "shard {} is not being closed at epoch {} and close generation {}",
                row.shard_id, request.epoch, request.close_generation
            )));
        }
        if request.ending_offset < row.segment_start_offset {
            return Err(ErrorCode::InvalidArgument.status(format!(
                "segment {} of shard {} starts at offset {}, after the ending offset {}",
                row.segment_index, row.shard_id, row.segment_start_offset, request.ending_offset
            )));
        }
        let alive = self.alive_workers().await?;
        let leader = alive
            .iter()
            .find(|w| w.worker_id == request.leader_worker_id)
            .ok_or_else(|| {
                ErrorCode::ResourceInUse.status(format!(
                    "worker {} is not a live storage worker",
                    request.leader_worker_id
                ))
            })?;
        let copies = store.copies_per_worker().await.map_err(store_error)?;
        let placement = placement::place_next_segment(&alive, leader, &copies);
        let mut sealed_segments = row.sealed_segments.clone();
        sealed_segments.push(SealedSegmentRow {
            index: row.segment_index,
            start_offset: row.segment_start_offset,
            end_offset: request.ending_offset,
            final_epoch: row.epoch,
            last_arrival_ms: request.last_arrival_ms,
            worker_ids: std::iter::once(row.leader_worker_id.clone())
                .chain(row.replica_worker_ids.iter().cloned())
                .collect(),
        });
        // A new segment starts empty on every copy: all of them vote.
        let voters = Voters::Stable(
            std::iter::once(placement.leader.clone())
                .chain(placement.replicas.iter().cloned())
                .collect(),
        );
        let next = ShardRow {
            state: ShardState::Open,
            leader_worker_id: placement.leader,
            replica_worker_ids: placement.replicas,
            voters,
            epoch: row.epoch + 1,
            close_generation: row.close_generation + 1,
            segment_index: row.segment_index + 1,
            segment_start_offset: request.ending_offset,
            sealed_segments,
            ..row
        };
        let entry = self
            .publish_reshard(&stream, vec![(next, Change::Relocate)])
            .await?
            .pop();
        Ok(Response::new(RelocateShardResponse { entry }))
    }

    async fn republish_stream(
        &self,
        request: Request<RepublishStreamRequest>,
    ) -> Result<Response<RepublishStreamResponse>, Status> {
        let (stream, shards) = self
            .live_stream_and_shards(request.into_inner().stream_uid)
            .await?;
        self.publish(&stream, shards, Change::Republish)
            .await
            .map_err(store_error)?;
        Ok(Response::new(RepublishStreamResponse {}))
    }

    async fn step_down(
        &self,
        request: Request<StepDownRequest>,
    ) -> Result<Response<StepDownResponse>, Status> {
        let request = request.into_inner();
        let shard = request
            .shard
            .ok_or_else(|| ErrorCode::InvalidArgument.status("shard is required"))?;
        let row = self
            .inner
            .store
            .shards_led_by(&request.worker_id)
            .await
            .map_err(store_error)?
            .into_iter()
            .find(|row| row.stream_uid == shard.stream_uid && row.shard_id == shard.shard_id)
            .filter(|row| row.epoch == request.epoch)
            .ok_or_else(|| {
                ErrorCode::ResourceInUse.status(format!(
                    "{} does not lead shard {} at epoch {}",
                    request.worker_id, shard.shard_id, request.epoch
                ))
            })?;
        let live: std::collections::HashMap<String, freshet_metastore::WorkerRow> = self
            .alive_workers()
            .await?
            .into_iter()
            .map(|w| (w.worker_id.clone(), w))
            .collect();
        // Only a leader that cannot commit may be replaced while it holds a
        // lease: its copy must say so itself. A rebuilding copy leaves that
        // state only through a leader of a newer epoch (it fences older
        // ones), so it cannot lead at this epoch again.
        let leader_address = live
            .get(&request.worker_id)
            .map(|w| w.address.clone())
            .unwrap_or_default();
        let rebuilding = matches!(
            failover::copy_position(&self.inner, &leader_address, &row).await,
            Some(failover::CopyAnswer::Rebuilding)
        );
        if !rebuilding {
            return Err(ErrorCode::ResourceInUse.status(format!(
                "{}'s copy of shard {} is not being rebuilt: a leader steps down only then",
                request.worker_id, shard.shard_id
            )));
        }
        tracing::warn!(
            shard_id = shard.shard_id,
            leader = request.worker_id,
            epoch = request.epoch,
            "a leader whose copy is being rebuilt asks to step down"
        );
        let moved = failover::fail_over(self, row, &live, failover::Deposition::SteppedDown)
            .await
            .map_err(|error| {
                ErrorCode::Unavailable.status(format!("failover failed to {error:#}"))
            })?;
        Ok(Response::new(StepDownResponse { moved }))
    }

    async fn report_replicas(
        &self,
        request: Request<ReportReplicasRequest>,
    ) -> Result<Response<ReportReplicasResponse>, Status> {
        let request = request.into_inner();
        let shard = request
            .shard
            .ok_or_else(|| ErrorCode::InvalidArgument.status("shard is required"))?;
        let stream = self.live_stream(shard.stream_uid).await?;
        let reported = Voters::from_lists(&request.voter_ids, &request.next_voter_ids);
        let alive: std::collections::HashSet<String> = self
            .alive_workers()
            .await?
            .into_iter()
            .map(|w| w.worker_id)
            .collect();
        let entries = self
            .publish_decided(&stream, |current| {
                let row = current.get(&shard.shard_id).ok_or_else(|| {
                    MetastoreError::NotFound(format!("shard {} does not exist", shard.shard_id))
                })?;
                if row.epoch != request.epoch || row.voters != reported {
                    return Err(MetastoreError::Conflict(format!(
                        "shard {} is at epoch {} with voters {:?}, not at epoch {} with {reported:?}",
                        shard.shard_id, row.epoch, row.voters, request.epoch
                    )));
                }
                Ok(reconfigure::after_report(row, &request.holding, |id| alive.contains(id))
                    .map(|row| vec![(row, Change::Reconfigure)])
                    .unwrap_or_default())
            })
            .await
            .map_err(store_error)?;
        if let Some(entry) = entries.first() {
            tracing::info!(
                shard_id = shard.shard_id,
                epoch = request.epoch,
                voters = ?entry.voter_ids,
                next_voters = ?entry.next_voter_ids,
                replicas = ?entry.replica_worker_ids,
                "shard's voters moved on"
            );
        }
        Ok(Response::new(ReportReplicasResponse {
            changed: !entries.is_empty(),
            entry: entries.into_iter().next().map(|e| self.stamp(e)),
        }))
    }

    type SubscribeStream = EventStream;

    async fn subscribe(
        &self,
        request: Request<SubscribeRequest>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        Ok(Response::new(
            self.subscribe_from(request.into_inner().from_version),
        ))
    }

    async fn register_consumer(
        &self,
        request: Request<RegisterConsumerRequest>,
    ) -> Result<Response<RegisterConsumerResponse>, Status> {
        self.register_consumer_logged(request.into_inner())
            .await
            .map(Response::new)
    }

    async fn deregister_consumer(
        &self,
        request: Request<DeregisterConsumerRequest>,
    ) -> Result<Response<DeregisterConsumerResponse>, Status> {
        self.deregister_consumer_logged(request.into_inner())
            .await
            .map(Response::new)
    }

    async fn finish_consumer_transitions(
        &self,
        request: Request<FinishConsumerTransitionsRequest>,
    ) -> Result<Response<FinishConsumerTransitionsResponse>, Status> {
        self.finish_consumer_transitions_logged(request.into_inner())
            .await
            .map(Response::new)
    }
}
