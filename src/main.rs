fn main() -> std::process::ExitCode {
    routestate::cli::main()
}
