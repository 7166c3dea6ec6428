use clap::Parser;

use aikore::cli::{self, Cli, Command};

fn main() {
    let cli = Cli::parse();
    let code = match cli.command {
        Command::Serve(args) => serve(args, cli.data_dir),
        Command::Check { files } => cli::check(&files),
        other => cli::run_client(&cli.url, &cli.data_dir, other),
    };
    std::process::exit(code);
}

fn serve(args: cli::ServeArgs, data_dir: std::path::PathBuf) -> i32 {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("AIKORE_LOG").unwrap_or_else(|_| "info".into()))
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .init();
    let settings = match args.settings(data_dir) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("aikore: {e}");
            return aikore::daemon::exit_code::STARTUP;
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("aikore: cannot start the runtime: {e}");
            return aikore::daemon::exit_code::STARTUP;
        }
    };
    match runtime.block_on(aikore::daemon::serve(settings)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("aikore: {e:#}");
            aikore::daemon::exit_code::STARTUP
        }
    }
}
