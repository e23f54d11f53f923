//! `hush`, the bundled client (not yet implemented; see the client issue).

fn main() {
    eprintln!("hush: the bundled client is not implemented yet");
    std::process::exit(2);
}
