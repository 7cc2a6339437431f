//! `init vm run`: one virtual machine's runner (what the supervisor starts for each VM).

use std::process::ExitCode;

use anyhow::Context;

pub fn vm_run(spec: &str) -> anyhow::Result<ExitCode> {
    let text = match spec.strip_prefix('@') {
        Some(file) => std::fs::read_to_string(file).with_context(|| format!("reading {file}"))?,
        None => spec.to_string(),
    };
    let spec: flint_init::vm::RunSpec = serde_json::from_str(&text).context("the VM spec")?;
    let code = flint_init::vm::runner::run(&spec)?;
    Ok(ExitCode::from(u8::try_from(code).unwrap_or(1)))
}
