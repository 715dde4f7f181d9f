//! `trust-sds serve` as a child process (the built binary), with its listen addresses read
//! from its start-up log line.

use std::time::Duration;

use tokio::io::AsyncBufReadExt;

pub struct ServeProcess {
    pub child: tokio::process::Child,
    pub sds_addr: String,
    pub admin_addr: String,
}

impl ServeProcess {
    /// Starts `trust-sds serve` on ephemeral ports with `args` (e.g. `--manifests DIR`);
    /// its log keeps being read so it never blocks on a full pipe.
    pub async fn start(args: &[&std::ffi::OsStr]) -> ServeProcess {
        let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_trust-sds"))
            .args([
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--admin-listen",
                "127.0.0.1:0",
            ])
            .args(args)
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let mut lines = tokio::io::BufReader::new(child.stderr.take().unwrap()).lines();
        let (sds_addr, admin_addr) = tokio::time::timeout(Duration::from_secs(10), async {
            while let Some(line) = lines.next_line().await.unwrap() {
                let field = |name: &str| {
                    line.split(name)
                        .nth(1)
                        .and_then(|r| r.split_whitespace().next())
                        .map(str::to_owned)
                };
                if let (Some(sds), Some(admin)) = (field("sds_addr="), field("admin_addr=")) {
                    return (sds, admin);
                }
            }
            panic!("server exited before serving");
        })
        .await
        .expect("server started");
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        ServeProcess {
            child,
            sds_addr,
            admin_addr,
        }
    }

    pub fn admin_port(&self) -> u16 {
        self.admin_addr.rsplit(':').next().unwrap().parse().unwrap()
    }
}
