//! `caravan tls ca create` and `caravan tls cert create`: the cluster's
//! certificate authority and the certificates servers present to each
//! other (all server traffic is mutual TLS), named as Nomad names them.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, bail};
use caravan_net::quic::DevCa;

const CA_CERT_FILE: &str = "caravan-agent-ca.pem";
const CA_KEY_FILE: &str = "caravan-agent-ca-key.pem";

#[derive(clap::Subcommand, Debug)]
pub(crate) enum TlsCommand {
    /// Certificate authority commands.
    #[command(subcommand)]
    Ca(CaCommand),
    /// Certificate commands.
    #[command(subcommand)]
    Cert(CertCommand),
}

#[derive(clap::Subcommand, Debug)]
pub(crate) enum CaCommand {
    /// Create a new CA: caravan-agent-ca.pem and caravan-agent-ca-key.pem.
    Create {
        /// Directory to write into.
        #[arg(long, default_value = ".")]
        dir: PathBuf,
    },
}

#[derive(clap::Subcommand, Debug)]
pub(crate) enum CertCommand {
    /// Issue a server certificate signed by the CA:
    /// global-server-caravan[-N].pem and its -key.pem.
    Create {
        /// A server certificate (the only kind servers need today).
        #[arg(long)]
        server: bool,
        /// The CA certificate.
        #[arg(long, default_value = CA_CERT_FILE)]
        ca: PathBuf,
        /// The CA key.
        #[arg(long, default_value = CA_KEY_FILE)]
        key: PathBuf,
        /// More DNS names or IP addresses the certificate is valid for.
        #[arg(long = "additional-dnsname")]
        additional_names: Vec<String>,
        /// Directory to write into.
        #[arg(long, default_value = ".")]
        dir: PathBuf,
    },
}

pub(crate) fn run(command: TlsCommand) -> anyhow::Result<ExitCode> {
    match command {
        TlsCommand::Ca(CaCommand::Create { dir }) => {
            let (cert, key) = (dir.join(CA_CERT_FILE), dir.join(CA_KEY_FILE));
            refuse_overwrite(&[&cert, &key])?;
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            let ca = DevCa::generate()?;
            ca.write_pem_to(&cert, &key)?;
            say(&[&cert, &key]);
        }
        TlsCommand::Cert(CertCommand::Create { server, ca, key, additional_names, dir }) => {
            if !server {
                bail!("only server certificates are supported: pass -server");
            }
            let ca = DevCa::load(&ca, &key).context("loading the CA (create one with `caravan tls ca create`)")?;
            // Nomad numbers further certificates: global-server-nomad-1.pem, ...
            let (cert, key) = (0..)
                .map(|n| {
                    let stem =
                        if n == 0 { "global-server-caravan".to_string() } else { format!("global-server-caravan-{n}") };
                    (dir.join(format!("{stem}.pem")), dir.join(format!("{stem}-key.pem")))
                })
                .find(|(c, k)| !c.exists() && !k.exists())
                .expect("some number is free");
            let names: Vec<&str> = additional_names.iter().map(String::as_str).collect();
            ca.issue_node(&names)?.write_node_pem_to(&cert, &key)?;
            say(&[&cert, &key]);
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn refuse_overwrite(paths: &[&Path]) -> anyhow::Result<()> {
    for path in paths {
        if path.exists() {
            bail!("{} already exists; refusing to overwrite it", path.display());
        }
    }
    Ok(())
}

#[allow(clippy::print_stdout)]
fn say(paths: &[&Path]) {
    for path in paths {
        println!("==> Created {}", path.display());
    }
}
