//! `sealfarm-worker`: the command line is [`sealfarm_worker::cli`].

fn main() {
    sealfarm_worker::cli::main()
}
