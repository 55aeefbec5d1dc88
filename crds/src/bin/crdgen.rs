//! Writes edgefleet's CRD YAML into each directory given, or with `--check` reports every
//! file that differs from what the types generate and exits 1.

use std::path::PathBuf;
use std::process::ExitCode;

use edgefleet_crds::schema::{crds, to_yaml};

fn main() -> ExitCode {
    let mut check = false;
    let mut dirs = Vec::new();
    for arg in std::env::args().skip(1) {
        match arg.as_str() {
            "--check" => check = true,
            "-h" | "--help" => {
                println!("usage: crdgen [--check] DIR...");
                return ExitCode::SUCCESS;
            }
            _ => dirs.push(PathBuf::from(arg)),
        }
    }
    if dirs.is_empty() {
        eprintln!("usage: crdgen [--check] DIR...");
        return ExitCode::from(2);
    }
    let mut drift = Vec::new();
    for (file, crd) in crds() {
        let yaml = match to_yaml(&crd) {
            Ok(y) => y,
            Err(e) => {
                eprintln!("crdgen: cannot render {file}: {e}");
                return ExitCode::FAILURE;
            }
        };
        for dir in &dirs {
            let path = dir.join(&file);
            if check {
                if std::fs::read_to_string(&path).ok().as_deref() != Some(yaml.as_str()) {
                    drift.push(path);
                }
            } else if let Err(e) = std::fs::write(&path, &yaml) {
                eprintln!("crdgen: cannot write {}: {e}", path.display());
                return ExitCode::FAILURE;
            }
        }
    }
    if drift.is_empty() {
        return ExitCode::SUCCESS;
    }
    for path in &drift {
        eprintln!("crdgen: {} differs from the types", path.display());
    }
    eprintln!("crdgen: run `make generate` and commit the result");
    ExitCode::FAILURE
}
