-- Tags on streams and consumers (AddTagsToStream, TagResource, Tags on
-- CreateStream and RegisterStreamConsumer), by the ARN of the resource
-- they are on, within the stream incarnation they were set on: a stream
-- deleted and created again under its name starts untagged.
CREATE TABLE resource_tags (
    stream_uid   BIGINT NOT NULL REFERENCES streams (stream_uid) ON DELETE CASCADE,
    resource_arn TEXT   NOT NULL,
    tag_key      TEXT   NOT NULL CHECK (char_length(tag_key) BETWEEN 1 AND 128),
    tag_value    TEXT   NOT NULL CHECK (char_length(tag_value) <= 256),
    PRIMARY KEY (stream_uid, resource_arn, tag_key)
);
