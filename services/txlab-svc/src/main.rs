//! `txlab-svc <role>`: one binary for every checkout service.

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let config = match txlab_svc::config::Config::from_args_and_env(std::env::args().skip(1)) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("txlab-svc: {e:#}");
            return std::process::ExitCode::from(2);
        }
    };
    txlab_svc::telemetry::init(config.role);
    match txlab_svc::run(config, txlab_svc::shutdown_signal()).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "service stopped on an error");
            std::process::ExitCode::FAILURE
        }
    }
}
