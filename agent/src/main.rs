//! The `mesh` binary (and `mesh-cni`, by its name): see the `mesh_agent`
//! library.

/// The static build's allocator (see Cargo.toml).
#[cfg(target_env = "musl")]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    mesh_agent::main()
}
