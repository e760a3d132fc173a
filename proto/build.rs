//! Compiles proto/weir.proto with protox (pure Rust): no protoc is needed on the machine.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/weir.proto");
    let descriptors = protox::compile(["proto/weir.proto"], ["proto"])?;
    tonic_prost_build::configure()
        .bytes(".weir.v1")
        .compile_fds(descriptors)?;
    Ok(())
}
