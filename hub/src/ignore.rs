//! `.skiffignore`: files of a channel's folder that are not manifests (`fleet.yaml`,
//! `values.yaml`, docs) left out of its bundle, in gitignore syntax (as Fleet's
//! `.fleetignore`): one pattern per line, `#` comments, `!` to re-include, a trailing `/`
//! for folders only, a `/` at the start or in the middle anchors the pattern at the folder's
//! top (otherwise it matches at any depth), `*` and `?` within one path part, `**` across
//! parts. The last matching pattern wins; a file inside an ignored folder is ignored.

/// Name of the ignore file, at the top of the rendered folder.
pub const IGNORE_FILE: &str = ".skiffignore";

/// Largest ignore file read.
pub const MAX_IGNORE_FILE: usize = 64 << 10;

#[derive(Clone, Debug)]
struct Rule {
    pattern: String,
    negate: bool,
    dir_only: bool,
    anchored: bool,
}

/// Parsed ignore rules.
#[derive(Clone, Debug, Default)]
pub struct Ignore {
    rules: Vec<Rule>,
}

impl Ignore {
    /// Parses the text of an ignore file.
    pub fn parse(text: &str) -> Self {
        let rules = text
            .lines()
            .filter_map(|line| {
                let line = line.trim_end();
                if line.is_empty() || line.starts_with('#') {
                    return None;
                }
                let (negate, line) = match line.strip_prefix('!') {
                    Some(rest) => (true, rest),
                    None => (false, line.strip_prefix('\\').unwrap_or(line)),
                };
                let (dir_only, line) = match line.strip_suffix('/') {
                    Some(rest) => (true, rest),
                    None => (false, line),
                };
                let anchored = line.contains('/');
                let pattern = line.trim_start_matches('/').to_owned();
                (!pattern.is_empty()).then_some(Rule {
                    pattern,
                    negate,
                    dir_only,
                    anchored,
                })
            })
            .collect();
        Self { rules }
    }

    /// Whether a file (path relative to the folder, `/`-separated) is left out.
    pub fn ignores(&self, path: &str) -> bool {
        if self.rules.is_empty() {
            return false;
        }
        // A file inside an ignored folder is ignored whatever its own rules say (as git).
        let parts: Vec<&str> = path.split('/').collect();
        for end in 1..parts.len() {
            if self.decide(&parts[..end].join("/"), true) == Some(true) {
                return true;
            }
        }
        self.decide(path, false) == Some(true)
    }

    fn decide(&self, path: &str, is_dir: bool) -> Option<bool> {
        let name = path.rsplit('/').next().unwrap_or(path);
        let mut verdict = None;
        for rule in &self.rules {
            if rule.dir_only && !is_dir {
                continue;
            }
            let hit = if rule.anchored {
                glob(rule.pattern.as_bytes(), path.as_bytes())
            } else {
                glob(rule.pattern.as_bytes(), name.as_bytes())
            };
            if hit {
                verdict = Some(!rule.negate);
            }
        }
        verdict
    }
}

/// gitignore-style glob: `*` and `?` stay within a path part, `**` crosses parts.
fn glob(pattern: &[u8], text: &[u8]) -> bool {
    match pattern {
        [] => text.is_empty(),
        [b'*', b'*', b'/', rest @ ..] => {
            (0..=text.len()).any(|i| (i == 0 || text[i - 1] == b'/') && glob(rest, &text[i..]))
        }
        [b'*', b'*', rest @ ..] => (0..=text.len()).any(|i| glob(rest, &text[i..])),
        [b'*', rest @ ..] => {
            let stop = text.iter().position(|&c| c == b'/').unwrap_or(text.len());
            (0..=stop).any(|i| glob(rest, &text[i..]))
        }
        [b'?', rest @ ..] => matches!(text.first(), Some(&c) if c != b'/') && glob(rest, &text[1..]),
        [p, rest @ ..] => text.first() == Some(p) && glob(rest, &text[1..]),
    }
}

#[cfg(test)]
mod tests {
    use super::Ignore;

    #[test]
    fn gitignore_patterns() {
        let ignore = Ignore::parse(
            "# not manifests\nfleet.yaml\n*values*.yaml\ndocs/\n/charts/**/README.yaml\n!keep/fleet.yaml\nexamples/*.yml\n",
        );
        for ignored in [
            "fleet.yaml",
            "apps/fleet.yaml",
            "values.yaml",
            "apps/prod-values-eu.yaml",
            "docs/a.yaml",
            "apps/docs/deep/b.yaml",
            "charts/x/y/README.yaml",
            "charts/README.yaml",
            "examples/a.yml",
        ] {
            assert!(ignore.ignores(ignored), "{ignored}");
        }
        for kept in [
            "apps/web.yaml",
            "keep/fleet.yaml",
            "docs.yaml",
            "other/charts/x/README.yaml",
            "examples/deep/a.yml",
            "valuesfile.json",
        ] {
            assert!(!ignore.ignores(kept), "{kept}");
        }
        assert!(!Ignore::parse("").ignores("a.yaml"));
    }
}
