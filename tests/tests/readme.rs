//! The README's REST examples are the commands `make demo` runs (examples/rest/try.sh): every
//! command of the script appears in the README verbatim, so what a reader copies is what the
//! demo showed working.

use std::path::Path;

#[test]
fn every_rest_example_the_demo_runs_is_in_the_readme() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let readme = std::fs::read_to_string(root.join("README.md")).expect("README.md");
    let script = std::fs::read_to_string(root.join("examples/rest/try.sh")).expect("try.sh");
    let commands: Vec<&str> = script
        .lines()
        .filter(|l| l.starts_with("curl ") || l.starts_with("ID="))
        .collect();
    assert!(commands.len() >= 10, "the script has its examples");
    for c in commands {
        assert!(
            readme.contains(c),
            "README.md lacks the demo's command:\n{c}"
        );
    }
}
