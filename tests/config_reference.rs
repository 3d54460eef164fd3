//! `docs/CONFIG.md` against the config types: every key the code reads is documented, the
//! page documents no key the code does not read, and its full examples parse.

use std::collections::{BTreeMap, BTreeSet};

use serde::de::{self, Deserialize, Visitor};

/// A deserializer that asks a type for its field names (serde's derive hands them to
/// `deserialize_struct`) and reads nothing.
struct FieldNames<'a>(&'a mut Vec<&'static str>);

#[derive(Debug)]
struct Captured;

impl std::fmt::Display for Captured {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("field names captured")
    }
}

impl std::error::Error for Captured {}

impl de::Error for Captured {
    fn custom<T: std::fmt::Display>(_: T) -> Self {
        Captured
    }
}

impl<'de> de::Deserializer<'de> for FieldNames<'_> {
    type Error = Captured;

    fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Captured> {
        Err(Captured)
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        fields: &'static [&'static str],
        _: V,
    ) -> Result<V::Value, Captured> {
        self.0.extend_from_slice(fields);
        Err(Captured)
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
        option unit unit_struct newtype_struct seq tuple tuple_struct map enum identifier
        ignored_any
    }
}

fn fields<T: for<'de> Deserialize<'de>>() -> BTreeSet<String> {
    let mut names = Vec::new();
    let _ = T::deserialize(FieldNames(&mut names));
    assert!(
        !names.is_empty(),
        "{} is not a struct",
        std::any::type_name::<T>()
    );
    names.into_iter().map(str::to_owned).collect()
}

/// `### \`section\`` → the keys of its table.
fn documented(page: &str) -> BTreeMap<String, BTreeSet<String>> {
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut section = None;
    for line in page.lines() {
        if let Some(title) = line.strip_prefix("### ") {
            section = Some(title.trim_matches('`').to_owned());
            out.entry(section.clone().unwrap()).or_default();
        } else if let (Some(s), Some(rest)) = (&section, line.strip_prefix("| `")) {
            let key = rest.split('`').next().unwrap().to_owned();
            out.get_mut(s).unwrap().insert(key);
        } else if line.starts_with("## ") {
            section = None;
        }
    }
    out
}

fn example<'a>(page: &'a str, which: &str) -> &'a str {
    let start = page.find(&format!("```yaml {which}\n")).expect("example") + 9 + which.len();
    let end = start + page[start..].find("```").unwrap();
    &page[start..end]
}

#[test]
fn every_config_key_is_documented_and_nothing_else() {
    use skiff_agent::config as agent;
    use skiff_hub::config as hub;
    let page = std::fs::read_to_string(skiff_tests::workspace_root().join("docs/CONFIG.md")).unwrap();
    let documented = documented(&page);
    let code: BTreeMap<&str, BTreeSet<String>> = BTreeMap::from([
        ("hub", fields::<hub::HubConfig>()),
        ("tls", fields::<hub::TlsConfig>()),
        ("repos[]", fields::<hub::RepoConfig>()),
        ("credentials", fields::<hub::Credentials>()),
        ("channels[]", fields::<hub::ChannelConfig>()),
        ("targets", fields::<hub::Targets>()),
        ("limits", fields::<hub::Limits>()),
        ("metrics", fields::<hub::MetricsConfig>()),
        ("assignments", fields::<hub::AssignmentConfig>()),
        ("customizations[]", fields::<hub::Customization>()),
        ("rollout", fields::<skiff_hub::rollout::RolloutPlan>()),
        ("steps[]", fields::<skiff_hub::rollout::Step>()),
        ("maintenance_windows[]", fields::<hub::MaintenanceConfig>()),
        ("windows[]", fields::<hub::WindowConfig>()),
        ("dashboard", fields::<hub::DashboardConfig>()),
        ("agent", fields::<agent::AgentConfig>()),
        ("channels.NAME", fields::<agent::ChannelSettings>()),
    ]);
    for (section, keys) in &code {
        let doc = documented
            .get(*section)
            .unwrap_or_else(|| panic!("docs/CONFIG.md has no section `{section}`"));
        let missing: Vec<_> = keys.difference(doc).collect();
        let stale: Vec<_> = doc.difference(keys).collect();
        assert!(
            missing.is_empty(),
            "`{section}`: keys not documented: {missing:?}"
        );
        assert!(
            stale.is_empty(),
            "`{section}`: documented keys the code does not read: {stale:?}"
        );
    }
    assert_eq!(documented.len(), code.len(), "sections: {:?}", documented.keys());
}

#[test]
fn the_full_examples_parse() {
    let page = std::fs::read_to_string(skiff_tests::workspace_root().join("docs/CONFIG.md")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    // The hub reads the webhook secret at start: give the example's files a home.
    let etc = dir.path().display().to_string();
    std::fs::write(dir.path().join("webhook.secret"), "webhook-secret-0123456789").unwrap();
    let hub_yaml = example(&page, "hub").replace("/etc/skiff", &etc);
    let config = skiff_hub::config::HubConfig::parse(
        std::path::Path::new("docs/CONFIG.md (hub example)"),
        hub_yaml.as_bytes(),
        &Default::default(),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(config.limits.max_connections_per_address, 512);
    let agent_yaml = example(&page, "agent");
    skiff_agent::config::AgentConfig::parse(
        std::path::Path::new("docs/CONFIG.md (agent example)"),
        agent_yaml.as_bytes(),
        &Default::default(),
    )
    .unwrap_or_else(|e| panic!("{e}"));
}
