//! The run configuration of a Docker image converted by rfs: a `/.startup.toml` file in the tree,
//! `[startup.entry]` with `name = "core.system"` and, under `args`, the command (`name`), its
//! arguments, environment and working directory. Read as flint's `oci.*` tags, so a service
//! can run the image (`"image": true`) as it runs one `flist pack` converted.

use std::collections::BTreeMap;

use serde::Deserialize;

/// Where rfs puts it.
pub const PATH: &[u8] = b"/.startup.toml";
/// The largest such file read: rfs writes a few hundred bytes.
pub const MAX_LEN: u64 = 64 << 10;

#[derive(Deserialize)]
struct File {
    startup: BTreeMap<String, Entry>,
}

#[derive(Deserialize)]
struct Entry {
    name: String,
    args: Option<SystemArgs>,
}

#[derive(Deserialize)]
struct SystemArgs {
    name: String,
    #[serde(default)]
    args: Vec<String>,
    #[serde(default)]
    env: BTreeMap<String, String>,
    dir: Option<String>,
}

/// The `oci.*` tags the file stands for: `oci.entrypoint` (the command and its arguments),
/// `oci.env` (`K=V`, sorted by name) and `oci.workdir`.
pub fn oci_tags(bytes: &[u8]) -> Result<BTreeMap<String, String>, String> {
    if bytes.len() as u64 > MAX_LEN {
        return Err(format!("/.startup.toml is {} bytes, over {MAX_LEN}", bytes.len()));
    }
    let text = std::str::from_utf8(bytes).map_err(|_| "/.startup.toml is not UTF-8".to_string())?;
    let file: File = basic_toml::from_str(text).map_err(|e| format!("/.startup.toml: {e}"))?;
    let entry = file.startup.get("entry").ok_or("/.startup.toml has no [startup.entry]")?;
    if entry.name != "core.system" {
        return Err(format!("/.startup.toml: entry {:?} is not core.system", entry.name));
    }
    let args = entry.args.as_ref().ok_or("/.startup.toml: core.system without args")?;
    let all = std::iter::once(&args.name).chain(&args.args).chain(args.env.keys()).chain(args.env.values());
    if args.name.is_empty() || all.chain(&args.dir).any(|s| s.contains('\0')) {
        return Err("/.startup.toml: an empty command or a NUL byte".into());
    }
    if args.env.keys().any(|k| k.is_empty() || k.contains('=')) {
        return Err("/.startup.toml: an environment name that is empty or holds '='".into());
    }
    let json = |v: Vec<String>| serde_json::to_string(&v).map_err(|e| e.to_string());
    let mut tags = BTreeMap::new();
    tags.insert(
        "oci.entrypoint".to_string(),
        json(std::iter::once(args.name.clone()).chain(args.args.clone()).collect())?,
    );
    if !args.env.is_empty() {
        tags.insert("oci.env".to_string(), json(args.env.iter().map(|(k, v)| format!("{k}={v}")).collect())?);
    }
    if let Some(dir) = args.dir.as_ref().filter(|d| !d.is_empty()) {
        tags.insert("oci.workdir".to_string(), dir.clone());
    }
    Ok(tags)
}

/// The `oci.*` tags of the `/.startup.toml` under a mounted or unpacked rfs tree at `root`:
/// `None` when it has none.
pub fn oci_tags_under(root: &std::path::Path) -> Option<Result<BTreeMap<String, String>, String>> {
    use std::io::Read;
    let file = match std::fs::File::open(root.join(".startup.toml")) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
        Err(e) => return Some(Err(format!("/.startup.toml: {e}"))),
    };
    let mut bytes = Vec::new();
    if let Err(e) = file.take(MAX_LEN + 1).read_to_end(&mut bytes) {
        return Some(Err(format!("/.startup.toml: {e}")));
    }
    Some(oci_tags(&bytes))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn rfs_docker_startup_becomes_oci_tags() {
        let toml = br#"
[startup.entry]
name = "core.system"

[startup.entry.args]
args = ["-f", "-p", "8080", "-h", "/www"]
dir = "/www"
name = "/bin/httpd"

[startup.entry.args.env]
GREETING = "hello from rfs"
PATH = "/bin"
"#;
        let tags = oci_tags(toml).unwrap();
        assert_eq!(tags["oci.entrypoint"], r#"["/bin/httpd","-f","-p","8080","-h","/www"]"#);
        assert_eq!(tags["oci.env"], r#"["GREETING=hello from rfs","PATH=/bin"]"#);
        assert_eq!(tags["oci.workdir"], "/www");
    }

    #[test]
    fn other_shapes_are_refused_with_a_reason() {
        for bad in [
            &b"not toml ["[..],
            b"[startup.entry]\nname = \"core.other\"\n",
            b"[startup.entry]\nname = \"core.system\"\n",
            b"[startup.entry]\nname = \"core.system\"\n[startup.entry.args]\nname = \"\"\n",
            b"[startup.entry]\nname = \"core.system\"\n[startup.entry.args]\nname = \"a\\u0000b\"\n",
            b"[startup.entry]\nname = \"core.system\"\n[startup.entry.args]\nname = \"/bin/sh\"\n[startup.entry.args.env]\n\"A=B\" = \"c\"\n",
            b"\xff\xfe",
        ] {
            assert!(oci_tags(bad).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
        assert!(oci_tags(&vec![b' '; MAX_LEN as usize + 1]).is_err());
    }
}
