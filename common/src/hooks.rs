//! wg-quick's hooks: shell commands run before and after `up` and its teardown, with `%i`
//! replaced by the interface name. They run in the same network namespace as suidao.

use std::process::Command;

/// Runs each command with `sh -c`; stops at the first that fails and says which.
pub fn run(stage: &str, commands: &[String], ifname: &str) -> Result<(), String> {
    for c in commands {
        let cmd = c.replace("%i", ifname);
        tracing::info!("{stage}: {cmd}");
        match Command::new("sh").arg("-c").arg(&cmd).status() {
            Ok(s) if s.success() => {}
            Ok(s) => return Err(format!("{stage} hook `{cmd}` failed ({s})")),
            Err(e) => return Err(format!("{stage} hook `{cmd}` could not run: {e}")),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn replaces_the_interface_name_and_reports_failure() {
        let dir = std::env::temp_dir().join(format!("suidao-hooks-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let out = dir.join("out");
        let cmd = format!("echo %i > {}", out.display());
        super::run("post_up", &[cmd], "sd7").unwrap();
        assert_eq!(std::fs::read_to_string(&out).unwrap().trim(), "sd7");
        let err = super::run("pre_up", &["exit 3".to_string()], "sd7").unwrap_err();
        assert!(err.contains("pre_up hook `exit 3` failed"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
