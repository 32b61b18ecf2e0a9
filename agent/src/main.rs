//! The `mesh` binary (and `mesh-cni`, by its name): see the `mesh_agent`
//! library.

fn main() -> std::process::ExitCode {
    mesh_agent::main()
}
