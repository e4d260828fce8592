fn main() {
    std::process::exit(conformance::cli::main(std::env::args_os()));
}
