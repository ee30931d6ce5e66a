//! Compiles `proto/freshet/v1/*.proto` once, into OUT_DIR, with the protoc
//! that the `protoc-bin-vendored` crate ships (no system install needed).
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto_root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../proto");
    let files = [
        "shardmap",
        "timer",
        "membership",
        "cache",
        "control_plane",
        "identities",
        "storage",
    ]
    .map(|name| proto_root.join(format!("freshet/v1/{name}.proto")));
    for file in &files {
        println!("cargo:rerun-if-changed={}", file.display());
    }
    let mut prost_config = tonic_prost_build::Config::new();
    prost_config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);
    // The descriptor set lets every service answer gRPC reflection.
    let descriptor_path =
        std::path::PathBuf::from(std::env::var("OUT_DIR")?).join("freshet_descriptor.bin");
    tonic_prost_build::configure()
        .file_descriptor_set_path(&descriptor_path)
        .bytes(".freshet.v1.RecordToAppend.data")
        .bytes(".freshet.v1.StoredRecord.data")
        .compile_with_config(prost_config, &files, &[proto_root])?;
    Ok(())
}
