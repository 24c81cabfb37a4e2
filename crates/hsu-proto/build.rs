//! Compiles every `.proto` under the workspace's `proto/` with protox (pure Rust, so no system
//! protoc is needed) and generates prost messages and tonic clients/servers from it. The file
//! descriptor set is also written to OUT_DIR for gRPC server reflection.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?).join("../../proto");
    let mut files = Vec::new();
    collect(&root, &mut files)?;
    files.sort();
    for f in &files {
        println!("cargo:rerun-if-changed={}", f.display());
    }
    println!("cargo:rerun-if-changed={}", root.display());

    let mut compiler = protox::Compiler::new([&root])?;
    compiler.include_imports(true).include_source_info(true).open_files(&files)?;
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out.join("hsu_descriptor.bin"), compiler.encode_file_descriptor_set())?;
    // `hsu ... -o json|yaml` prints the messages themselves: the field names are the proto's.
    // A field whose zero value means "none" prints as null, as the CLI printed it before; a
    // token's kind and role print as their names.
    let null_when_zero = "#[serde(serialize_with = \"crate::json::zero_as_null\")]";
    let null_when_empty = "#[serde(serialize_with = \"crate::json::empty_as_null\")]";
    tonic_prost_build::configure()
        .type_attribute(".hsu.v1", "#[derive(serde::Serialize)]")
        .field_attribute(".hsu.v1.DeploymentInfo.rolled_back_from", null_when_zero)
        .field_attribute(".hsu.v1.DeploymentInfo.unplaced", null_when_empty)
        .field_attribute(".hsu.v1.DeploymentInfo.failure", null_when_empty)
        .field_attribute(".hsu.v1.InstanceInfo.message", null_when_empty)
        .field_attribute(".hsu.v1.JobInfo.unplaced", null_when_empty)
        .field_attribute(".hsu.v1.JobRunInfo.finished_ms", null_when_zero)
        .field_attribute(".hsu.v1.TokenInfo.kind", "#[serde(serialize_with = \"crate::json::token_kind\")]")
        .field_attribute(".hsu.v1.TokenInfo.role", "#[serde(serialize_with = \"crate::json::api_role\")]")
        .field_attribute(".hsu.v1.RevisionInfo.number", "#[serde(rename = \"revision\")]")
        .field_attribute(
            ".hsu.v1.DeploymentDetail.spec_json",
            "#[serde(rename = \"spec\", serialize_with = \"crate::json::parsed\")]",
        )
        .compile_fds(compiler.file_descriptor_set())?;
    Ok(())
}

fn collect(dir: &std::path::Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            collect(&path, out)?;
        } else if path.extension().is_some_and(|e| e == "proto") {
            out.push(path);
        }
    }
    Ok(())
}
