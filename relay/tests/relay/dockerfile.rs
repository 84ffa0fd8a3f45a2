//! The image copies the binary its build stage produces (there is no Docker engine here to
//! build it, so the paths are checked as text; hadolint lints the rest in CI).

use std::path::Path;

#[test]
fn the_image_copies_the_binary_the_build_stage_produces() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let dockerfile = std::fs::read_to_string(root.join("Dockerfile")).unwrap();
    let lines: Vec<&str> = dockerfile.lines().map(str::trim).collect();

    let builder = lines
        .iter()
        .find_map(|line| {
            let rest = line.strip_prefix("FROM ")?;
            let (image, name) = rest.split_once(" AS ")?;
            image.starts_with("rust:").then(|| name.trim().to_owned())
        })
        .expect("a build stage FROM rust:... AS <name>");
    let workdir = lines
        .iter()
        .find_map(|line| line.strip_prefix("WORKDIR "))
        .expect("the build stage sets WORKDIR")
        .trim();
    assert!(
        lines.iter().any(|line| line.contains("cargo build")
            && line.contains("--release")
            && line.contains("-p cue-relay")),
        "the build stage runs cargo build --release -p cue-relay"
    );
    let copy = lines
        .iter()
        .find(|line| line.starts_with(&format!("COPY --from={builder} ")))
        .expect("the runtime stage copies from the build stage");
    let source = copy.split_whitespace().nth(2).unwrap();
    assert_eq!(source, format!("{workdir}/target/release/cue-relay"));
    // The runtime stage runs what it copied, as a non-root user, and checks its health.
    let destination = copy.split_whitespace().nth(3).unwrap();
    assert!(dockerfile.contains(&format!("ENTRYPOINT [\"{destination}\"]")));
    assert!(dockerfile.contains(":nonroot") || dockerfile.contains("USER "));
    assert!(dockerfile.contains(&format!("CMD [\"{destination}\", \"healthcheck\"]")));
    assert!(lines.iter().any(|line| line.starts_with("EXPOSE 8080")));

    // The build stage's binary path is where cargo puts it for this package name.
    let manifest = std::fs::read_to_string(root.join("relay/Cargo.toml")).unwrap();
    assert!(manifest.contains("name = \"cue-relay\""));
}
