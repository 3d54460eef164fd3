//! The manifest parser on real-world manifests written by others (`shared/corpus`): every
//! file parses, the document counts match what each set's SOURCE.txt recorded, and the known
//! YAML 1.1 traps read as Kubernetes reads them.

use skiff_proto::manifest::{ManifestError, parse_file, parse_objects};
use skiff_tests::{corpus_dir, files_with_ext};

const SETS: [&str; 5] = [
    "gateway-api",
    "gke-samples",
    "kubernetes-examples",
    "microservices-demo",
    "podinfo",
];

fn recorded(corpus: &std::path::Path, set: &str, field: &str) -> usize {
    let source = std::fs::read_to_string(corpus.join(set).join("SOURCE.txt")).unwrap();
    source
        .lines()
        .find_map(|l| l.trim().strip_prefix(&format!("{field}:")))
        .unwrap_or_else(|| panic!("{set}/SOURCE.txt has no {field}"))
        .trim()
        .parse()
        .unwrap()
}

/// Manifest files as SOURCE.txt counts them: *.yaml/*.yml/*.json outside `kustomize/`.
fn manifest_files(corpus: &std::path::Path, set: &str) -> Vec<String> {
    files_with_ext(&corpus.join(set), &[".yaml", ".yml", ".json"])
        .into_iter()
        .filter(|p| !p.starts_with("kustomize/"))
        .collect()
}

#[test]
fn every_corpus_file_parses_and_document_counts_match_source_txt() {
    let Some(corpus) = corpus_dir("every_corpus_file_parses_and_document_counts_match_source_txt") else {
        return;
    };
    for set in SETS {
        let files = manifest_files(&corpus, set);
        assert_eq!(
            files.len(),
            recorded(&corpus, set, "manifest files"),
            "{set}: manifest files"
        );
        let mut documents = 0;
        for file in &files {
            let bytes = std::fs::read(corpus.join(set).join(file)).unwrap();
            let docs = parse_file(file, &bytes).unwrap_or_else(|e| panic!("{set}: {e}"));
            documents += docs.len();
        }
        assert_eq!(documents, recorded(&corpus, set, "documents"), "{set}: documents");
    }
}

#[test]
fn corpus_objects_have_names_except_the_documented_generate_name_jobs() {
    let Some(corpus) = corpus_dir("corpus_objects_have_names_except_the_documented_generate_name_jobs")
    else {
        return;
    };
    let mut generate_name = Vec::new();
    for set in SETS {
        for file in manifest_files(&corpus, set) {
            let bytes = std::fs::read(corpus.join(set).join(&file)).unwrap();
            match parse_objects(&file, &bytes) {
                Ok(objects) => assert!(objects.iter().all(|o| !o.name.is_empty())),
                Err(ManifestError::NotAnObject { problem, .. }) if problem.contains("generateName") => {
                    generate_name.push(format!("{set}/{file}"));
                }
                Err(e) => panic!("{set}: {e}"),
            }
        }
    }
    // SOURCE.txt of gke-samples: batch/kueue-intro/job-team-{a,b}.yaml use generateName.
    assert!(!generate_name.is_empty());
    assert!(
        generate_name.iter().all(|f| f.contains("kueue-intro/job-team-")),
        "{generate_name:?}"
    );
}

#[test]
fn unquoted_octal_default_mode_reads_as_kubernetes_reads_it() {
    let Some(corpus) = corpus_dir("unquoted_octal_default_mode_reads_as_kubernetes_reads_it") else {
        return;
    };
    let file = "quickstarts/hello-app-redis/manifests/redis-cluster.yaml";
    let bytes = std::fs::read(corpus.join("gke-samples").join(file)).unwrap();
    let text = String::from_utf8_lossy(&bytes);
    assert!(
        text.contains("defaultMode: 0755"),
        "the trap is still in the corpus"
    );
    let mut modes = Vec::new();
    fn collect(v: &serde_json::Value, out: &mut Vec<serde_json::Value>) {
        match v {
            serde_json::Value::Object(m) => {
                for (k, v) in m {
                    if k == "defaultMode" {
                        out.push(v.clone());
                    }
                    collect(v, out);
                }
            }
            serde_json::Value::Array(a) => a.iter().for_each(|v| collect(v, out)),
            _ => {}
        }
    }
    for doc in parse_file(file, &bytes).unwrap() {
        collect(&doc.value, &mut modes);
    }
    assert!(modes.contains(&serde_json::json!(493)), "{modes:?}");
    assert!(modes.contains(&serde_json::json!(365)), "{modes:?}");
}

/// Substitution with no variables defined changes no corpus object: files without a
/// reference come out identical; the few whose shell scripts use `${VAR}` (mysql's
/// `${HOSTNAME}`, the load generator's `${FRONTEND_ADDR}`, podinfo's scripts) are refused
/// naming file, document, line and variable — never mangled — and once escaped as `$${VAR}`
/// (as Flux asks too) come out identical to the original.
#[test]
fn substitution_with_no_variables_changes_no_corpus_object() {
    use skiff_proto::manifest::{Budget, parse_objects_substituted};
    let Some(corpus) = corpus_dir("substitution_with_no_variables_changes_no_corpus_object") else {
        return;
    };
    let none = |_: &str| None;
    let (mut identical, mut escaped) = (0, Vec::new());
    for set in SETS {
        for file in manifest_files(&corpus, set) {
            let bytes = std::fs::read(corpus.join(set).join(&file)).unwrap();
            let Ok(plain) = parse_objects(&file, &bytes) else {
                continue; // the generateName jobs: refused with or without substitution
            };
            let values = |objs: Vec<skiff_proto::manifest::Object>| {
                objs.into_iter().map(|o| o.value).collect::<Vec<_>>()
            };
            let plain = values(plain);
            match parse_objects_substituted(&file, &bytes, &mut Budget::for_file(bytes.len()), &none) {
                Ok(objs) => {
                    assert_eq!(values(objs), plain, "{set}/{file}: changed by substitution");
                    identical += 1;
                }
                Err(e @ ManifestError::Unset { .. }) => {
                    let m = e.to_string();
                    assert!(
                        m.contains(&file) && m.contains("document") && m.contains("line"),
                        "{m}"
                    );
                    let text = String::from_utf8(bytes).unwrap();
                    assert!(!text.contains("$${"), "{set}/{file} escapes already");
                    let escaped_text = text.replace("${", "$${");
                    let objs = parse_objects_substituted(
                        &file,
                        escaped_text.as_bytes(),
                        &mut Budget::for_file(escaped_text.len()),
                        &none,
                    )
                    .unwrap_or_else(|e| panic!("{set}/{file} escaped: {e}"));
                    assert_eq!(
                        values(objs),
                        plain,
                        "{set}/{file}: escaping must give the original back"
                    );
                    escaped.push(format!("{set}/{file}"));
                }
                Err(e) => panic!("{set}/{file}: {e}"),
            }
        }
    }
    println!(
        "substitution on the corpus: {identical} files identical, {} refused until escaped: {escaped:?}",
        escaped.len()
    );
    assert!(identical > 100, "{identical}");
    assert_eq!(escaped.len(), 11, "{escaped:?}");
}
