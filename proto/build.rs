//! Generates the Rust client and server for `proto/istio/**` with the protoc vendored on crates.io.

use std::error::Error;

fn main() -> Result<(), Box<dyn Error>> {
    // A vendored protoc keeps the build independent of whatever (if any) protoc the host has.
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    let well_known = protoc_bin_vendored::include_path()?;

    let mut config = tonic_prost_build::Config::new();
    config.protoc_executable(protoc);

    let well_known = well_known
        .to_str()
        .ok_or("protoc include path is not UTF-8")?
        .to_owned();
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_with_config(
            config,
            &["istio/v1/auth/ca.proto".to_owned()],
            &[".".to_owned(), well_known],
        )?;
    Ok(())
}
