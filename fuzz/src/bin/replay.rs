//! Runs the fuzz case on files, or on every file under folders: the seeds and every input AFL ever
//! found crashing (fuzz/regressions), as CI's fuzz smoke run. A panic fails the run and names the file.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

fn files(path: &Path, out: &mut Vec<PathBuf>) {
    match std::fs::read_dir(path) {
        Ok(entries) => {
            let mut paths: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
            paths.sort();
            paths.iter().for_each(|p| files(p, out));
        }
        Err(_) if path.is_file() => out.push(path.to_path_buf()),
        Err(_) => {}
    }
}

fn main() -> ExitCode {
    let mut all = vec![];
    std::env::args_os().skip(1).for_each(|a| files(Path::new(&a), &mut all));
    if all.is_empty() {
        eprintln!("usage: fuzz-replay FILE_OR_FOLDER...");
        return ExitCode::from(2);
    }
    let case = onnx_minimize_fuzz::Case::new();
    for path in &all {
        let data = match std::fs::read(path) {
            Ok(data) => data,
            Err(e) => {
                eprintln!("cannot read {}: {e}", path.display());
                return ExitCode::from(1);
            }
        };
        if std::panic::catch_unwind(|| case.run(&data)).is_err() {
            eprintln!("fuzz case panicked: {}", path.display());
            return ExitCode::from(101);
        }
    }
    println!("{} fuzz cases ran without a panic", all.len());
    ExitCode::SUCCESS
}
