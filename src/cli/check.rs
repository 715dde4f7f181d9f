//! `trust-sds check`: the validation table, offline, on Secret manifests or PEM files.

use std::path::PathBuf;
use std::process::ExitCode;

use crate::bundle::TrustBundle;
use crate::model::{Object, SecretKeyRef};
use crate::pipeline::unix_now;
use crate::source::manifests::parse_manifests;
use crate::translate::{expiry_note, format_unix};
use crate::validation::{Failure, Subject, validate_data, validate_reference};

#[derive(clap::Args, Debug)]
pub struct CheckArgs {
    /// Secret manifests (YAML) or PEM files.
    #[arg(required = true, value_name = "FILE")]
    files: Vec<PathBuf>,
    /// The Secret key holding the CA certificates.
    #[arg(long, default_value = "ca.crt")]
    key: String,
    /// Check as a gateway-wide CA bundle (MCPGatewayExtension.caCertBundleRef): 256 KiB cap.
    #[arg(long)]
    gateway_bundle: bool,
    /// Report certificates that expire within this many days.
    #[arg(long, default_value_t = 30)]
    expiry_warning_days: i64,
}

pub fn run(args: &CheckArgs) -> anyhow::Result<ExitCode> {
    let subject = if args.gateway_bundle {
        Subject::GatewayBundle
    } else {
        Subject::ServerCa
    };
    let mut failed = false;
    for file in &args.files {
        let origin = file.display().to_string();
        let bytes = match std::fs::read(file) {
            Ok(b) => b,
            Err(e) => {
                println!("{origin}: cannot read: {e}");
                failed = true;
                continue;
            }
        };
        let results = check_file(&origin, &bytes, subject, &args.key);
        for (what, result) in results {
            match result {
                Ok(bundle) => println!(
                    "{origin}: {what}: OK: {}{}",
                    describe(&bundle),
                    warn_suffix(&bundle, args.expiry_warning_days)
                ),
                Err(message) => {
                    failed = true;
                    println!("{origin}: {what}: {message}");
                }
            }
        }
    }
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

type CheckResult = (String, Result<TrustBundle, String>);

/// Checks a manifest's Secrets, or the file as PEM when it holds no Secret.
fn check_file(origin: &str, bytes: &[u8], subject: Subject, key: &str) -> Vec<CheckResult> {
    let text = String::from_utf8_lossy(bytes);
    let looks_like_pem = text.contains("-----BEGIN ") && !text.contains("kind:");
    if !looks_like_pem && let Ok(parsed) = parse_manifests(&text, origin, "default") {
        let mut out: Vec<CheckResult> = Vec::new();
        for object in parsed.objects {
            if let Object::Secret(secret) = object {
                let reference = SecretKeyRef::new(&secret.key.name, Some(key));
                let result = validate_reference(subject, &reference, Some(&secret))
                    .map_err(|f: Failure| format!("{} ({})", f, f.reason()));
                out.push((format!("secret {}", secret.key), result));
            }
        }
        // Documents that were meant as Secrets but did not decode are reported too; a file
        // with no Secret at all is checked as PEM below.
        if !out.is_empty() || parsed.skipped.iter().any(|(_, why)| why.contains("Secret")) {
            out.extend(
                parsed
                    .skipped
                    .into_iter()
                    .map(|(location, reason)| (location, Err(reason))),
            );
            return out;
        }
    }
    let name = std::path::Path::new(origin)
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| origin.to_owned());
    let result = validate_data(subject, bytes).map_err(|check| {
        let f = Failure {
            subject,
            secret: name,
            key: key.to_owned(),
            check,
        };
        format!("{} ({})", f, f.reason())
    });
    vec![("PEM".to_owned(), result)]
}

fn describe(bundle: &TrustBundle) -> String {
    let certs: Vec<String> = bundle
        .certificates()
        .map(|c| {
            format!(
                "\"{}\" (expires {})",
                c.display_name,
                format_unix(c.not_after)
            )
        })
        .collect();
    format!(
        "{} certificate(s), version {}: {}",
        certs.len(),
        bundle.version(),
        certs.join(", ")
    )
}

fn warn_suffix(bundle: &TrustBundle, days: i64) -> String {
    expiry_note(bundle, unix_now(), days * 86_400)
        .map(|n| format!("; {n}"))
        .unwrap_or_default()
}
