//! The two ways to build the operator image describe the same image: the Dockerfile (with
//! Docker) and `make image-oci` (hack/image/oci.py, without). This builds an archive with the
//! real packer (around a stand-in binary) and compares its config with the Dockerfile's final
//! stage: entrypoint, command, user and exposed port; and checks the layout the image relies on.

use std::{collections::BTreeMap, process::Command};

use crate::support::{cli::repo_root, faults::TempDir};

/// USER, EXPOSE, ENTRYPOINT and CMD of the Dockerfile's last stage.
fn dockerfile_final_stage() -> BTreeMap<String, String> {
    let text = std::fs::read_to_string(repo_root().join("Dockerfile")).unwrap();
    let last = text.rsplit("\nFROM ").next().unwrap();
    let mut out = BTreeMap::new();
    for line in last.lines().map(str::trim) {
        if let Some((word, rest)) = line.split_once(' ')
            && ["USER", "EXPOSE", "ENTRYPOINT", "CMD"].contains(&word)
        {
            assert!(out.insert(word.to_owned(), rest.trim().to_owned()).is_none(), "{word} twice in the final stage");
        }
    }
    out
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(out.status.success(), "{cmd:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn json(path: &std::path::Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn blob(dir: &std::path::Path, digest: &serde_json::Value) -> std::path::PathBuf {
    dir.join("blobs/sha256").join(digest.as_str().unwrap().strip_prefix("sha256:").unwrap())
}

#[test]
fn the_oci_image_and_the_dockerfile_agree() {
    let tmp = TempDir::new("oci");
    let binary = tmp.path().join("routestate");
    std::fs::write(&binary, b"stand-in").unwrap();
    let archive = tmp.path().join("routestate.oci.tar");
    run(Command::new("python3")
        .arg(repo_root().join("hack/image/oci.py"))
        .args(["build", "operator", "--name", "localhost/routestate:drift", "--binary"])
        .arg(&binary)
        .arg("--out")
        .arg(&archive));
    let layout = tmp.path().join("layout");
    std::fs::create_dir(&layout).unwrap();
    run(Command::new("tar").arg("-xf").arg(&archive).arg("-C").arg(&layout));

    assert_eq!(json(&layout.join("oci-layout"))["imageLayoutVersion"], "1.0.0");
    let index = json(&layout.join("index.json"));
    let entry = &index["manifests"][0];
    assert_eq!(entry["annotations"]["io.containerd.image.name"], "localhost/routestate:drift");
    assert_eq!(entry["annotations"]["org.opencontainers.image.ref.name"], "drift");
    let manifest = json(&blob(&layout, &entry["digest"]));
    let config = json(&blob(&layout, &manifest["config"]["digest"]));
    let c = &config["config"];

    let docker = dockerfile_final_stage();
    let array = |s: &str| serde_json::from_str::<serde_json::Value>(s).unwrap_or_else(|e| panic!("{s}: {e}"));
    assert_eq!(c["Entrypoint"], array(&docker["ENTRYPOINT"]), "ENTRYPOINT");
    assert_eq!(c["Cmd"], array(&docker["CMD"]), "CMD");
    assert_eq!(c["User"], docker["USER"].as_str(), "USER");
    let ports: Vec<String> = docker["EXPOSE"]
        .split_whitespace()
        .map(|p| if p.contains('/') { p.to_owned() } else { format!("{p}/tcp") })
        .collect();
    let exposed: Vec<String> = c["ExposedPorts"].as_object().unwrap().keys().cloned().collect();
    assert_eq!(exposed, ports, "EXPOSE");
    assert_eq!(config["os"], "linux");
    assert_eq!(config["architecture"], "amd64");

    // The layer: the binary at the entrypoint, the nonroot user, a writable-nowhere root but /tmp.
    let layer = blob(&layout, &manifest["layers"][0]["digest"]);
    let listing = run(Command::new("tar").arg("-tvzf").arg(&layer).arg("--numeric-owner"));
    let entry_of = |path: &str| {
        listing
            .lines()
            .find(|l| l.ends_with(&format!(" {path}")) || l.ends_with(&format!(" {path}/")))
            .map(str::to_owned)
    };
    let bin = entry_of(c["Entrypoint"][0].as_str().unwrap().trim_start_matches('/')).expect("the binary in the layer");
    assert!(bin.starts_with("-rwxr-xr-x 0/0"), "{bin}");
    let tmpdir = entry_of("tmp").expect("/tmp");
    assert!(tmpdir.starts_with("drwxrwxrwt"), "{tmpdir}");
    entry_of("etc/ssl/certs/ca-certificates.crt").expect("CA certificates");
    let passwd = run(Command::new("tar").arg("-xOzf").arg(&layer).arg("etc/passwd"));
    let uid = docker["USER"].split(':').next().unwrap();
    assert!(passwd.lines().any(|l| l.split(':').nth(2) == Some(uid)), "user {uid} not in /etc/passwd:\n{passwd}");
}

#[test]
fn the_packer_rejects_bad_input_with_a_message() {
    let tmp = TempDir::new("oci-bad");
    let out = tmp.path().join("x.tar");
    let missing = tmp.path().join("missing");
    for (args, want) in [
        (vec!["build", "nope", "--name", "a:b", "--binary", missing.to_str().unwrap()], "unknown image 'nope'"),
        (vec!["build", "operator", "--name", "a:b", "--binary", missing.to_str().unwrap()], "reading the binary"),
        (
            vec!["build", "operator", "--name", "localhost/routestate", "--binary", missing.to_str().unwrap()],
            "needs a tag",
        ),
    ] {
        let o = Command::new("python3")
            .arg(repo_root().join("hack/image/oci.py"))
            .args(&args)
            .arg("--out")
            .arg(&out)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success() && err.contains(want), "{args:?}: {err}");
        assert!(!err.contains("Traceback"), "{args:?}: {err}");
        assert!(!out.exists());
    }
}
