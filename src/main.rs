use clap::Parser;

use aikore::cli::{self, Cli, Command};

fn main() {
    let cli = Cli::parse();
    let code = match cli.command {
        Command::Serve(args) => serve(args, cli.data_dir),
        Command::Check { files } => {
            die_on_closed_stdout();
            cli::check(&files)
        }
        other => {
            die_on_closed_stdout();
            cli::run_client(&cli.url, &cli.data_dir, other)
        }
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
    limit_malloc_arenas();
    let runtime =
        match tokio::runtime::Builder::new_multi_thread().worker_threads(worker_threads()).enable_all().build() {
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

/// Rust ignores SIGPIPE, so `aikore status | head -1` or `| grep -q` made
/// println! panic once the reader left. A command-line tool ends quietly
/// there, as systemctl and coreutils do. Not for `serve`: the daemon writes to
/// sockets and pipes whose far end may go at any time.
fn die_on_closed_stdout() {
    // SAFETY: restores the default disposition of one signal before any
    // thread starts; no handler runs Rust code.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

/// glibc gives every thread that allocates under contention an arena of its
/// own (up to 8 per core), each keeping freed memory for itself: a daemon of
/// a dozen threads held several half-empty arenas. Two is plenty for a
/// supervisor's allocations (measured, benches/idle-rss.sh). Set before any
/// thread starts; MALLOC_ARENA_MAX in the environment still wins if set.
fn limit_malloc_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        // SAFETY: mallopt only sets an allocator parameter; called while the
        // process has one thread, before the runtime starts any.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, 2);
        }
    }
}

/// Tokio's default is one worker per CPU: 64 threads, stacks and arenas on
/// a big GPU host, for a daemon whose work is waiting on pipes, timers and
/// sockets. Four keep log floods of several units and API requests apart;
/// AIKORE_WORKER_THREADS overrides.
fn worker_threads() -> usize {
    const DEFAULT_MAX: usize = 4;
    if let Some(n) = std::env::var("AIKORE_WORKER_THREADS").ok().and_then(|v| v.trim().parse::<usize>().ok()) {
        if n > 0 {
            return n;
        }
    }
    std::thread::available_parallelism().map_or(2, |n| n.get()).clamp(1, DEFAULT_MAX)
}
