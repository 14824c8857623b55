use clap::Parser;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    txlab_cli::main(txlab_cli::Cli::parse()).await
}
