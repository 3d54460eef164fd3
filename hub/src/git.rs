//! Trees at exact commits, read from the object database with the `git` CLI.
//!
//! Nothing here looks at a working tree: what is built is exactly what was committed, so
//! uncommitted or untracked files can never leak into a bundle.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// A Git operation failed.
#[derive(Debug, thiserror::Error)]
pub enum GitError {
    /// `git` could not be started.
    #[error("running git in {repo}: {source} (is git installed?)")]
    Spawn {
        /// The repository.
        repo: PathBuf,
        /// Why it did not start.
        source: std::io::Error,
    },
    /// `git` exited non-zero.
    #[error("git {args} in {repo} failed: {stderr}")]
    Failed {
        /// The repository.
        repo: PathBuf,
        /// The arguments.
        args: String,
        /// What git printed on stderr.
        stderr: String,
    },
    /// The revision does not name a commit.
    #[error("{rev:?} is not a commit in {repo}: {stderr}")]
    UnknownRevision {
        /// The repository.
        repo: PathBuf,
        /// The revision.
        rev: String,
        /// What git said.
        stderr: String,
    },
    /// The path does not exist, or is not a folder, at that commit.
    #[error("path {path:?} is not a folder at commit {commit} of {repo}")]
    NoSuchPath {
        /// The repository.
        repo: PathBuf,
        /// The commit.
        commit: String,
        /// The path.
        path: String,
    },
    /// A tree entry's path is not a safe relative path (`..`, `.`, `a//b`, a backslash …).
    /// Git tree entries are names, not paths: a crafted tree can hold `..`.
    #[error(
        "commit {commit} of {repo} has a tree entry {path:?} that is not a safe path ({problem}); refusing the whole commit"
    )]
    UnsafePath {
        /// The repository.
        repo: PathBuf,
        /// The commit.
        commit: String,
        /// The path as git listed it.
        path: String,
        /// What is wrong with it.
        problem: skiff_proto::bundle::PathProblem,
    },
    /// Output of git that this code cannot read.
    #[error("unexpected output from git {args} in {repo}: {detail}")]
    Protocol {
        /// The repository.
        repo: PathBuf,
        /// The arguments.
        args: String,
        /// What was unexpected.
        detail: String,
    },
}

/// What a tree entry is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EntryKind {
    /// A regular (or executable) file.
    File,
    /// A symbolic link.
    Symlink,
    /// A submodule commit.
    Submodule,
}

/// One file of a tree.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TreeEntry {
    /// Path relative to the folder that was listed.
    pub path: String,
    /// What it is.
    pub kind: EntryKind,
    /// The blob (or commit, for submodules) id.
    pub oid: String,
}

/// A local repository (bare or not), driven through `git -C`.
#[derive(Clone, Debug)]
pub struct Repo {
    path: PathBuf,
}

impl Repo {
    /// The repository at `path`.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self { path: path.into() }
    }

    /// Its path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn command(&self) -> Command {
        let mut cmd = Command::new("git");
        cmd.arg("-C")
            .arg(&self.path)
            // Never ask for credentials on a terminal; never pick up a replaced object.
            .env("GIT_TERMINAL_PROMPT", "0")
            .env("GIT_NO_REPLACE_OBJECTS", "1")
            .stdin(Stdio::null());
        cmd
    }

    fn run(&self, args: &[&str]) -> Result<Vec<u8>, GitError> {
        let output = self
            .command()
            .args(args)
            .output()
            .map_err(|source| GitError::Spawn {
                repo: self.path.clone(),
                source,
            })?;
        if !output.status.success() {
            return Err(GitError::Failed {
                repo: self.path.clone(),
                args: args.join(" "),
                stderr: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
            });
        }
        Ok(output.stdout)
    }

    /// The full id of the commit `rev` names (any commit-ish: branch, tag, sha, `HEAD~2`).
    pub fn resolve_commit(&self, rev: &str) -> Result<String, GitError> {
        let spec = format!("{rev}^{{commit}}");
        match self.run(&["rev-parse", "--verify", "--quiet", "--end-of-options", &spec]) {
            Ok(out) => Ok(String::from_utf8_lossy(&out).trim().to_owned()),
            Err(GitError::Failed { stderr, .. }) => Err(GitError::UnknownRevision {
                repo: self.path.clone(),
                rev: rev.to_owned(),
                stderr: if stderr.is_empty() {
                    "no such revision".to_owned()
                } else {
                    stderr
                },
            }),
            Err(e) => Err(e),
        }
    }

    /// The repository's branches (at most `max`, sorted).
    pub fn branches(&self, max: usize) -> Vec<String> {
        self.run(&["for-each-ref", "--format=%(refname:short)", "refs/heads/"])
            .map(|out| {
                String::from_utf8_lossy(&out)
                    .lines()
                    .take(max)
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Whether `refs/heads/<name>` exists.
    pub fn is_branch(&self, name: &str) -> bool {
        self.run(&["show-ref", "--verify", "--quiet", &format!("refs/heads/{name}")])
            .is_ok()
    }

    /// The URL of remote `origin`, if there is one.
    pub fn origin_url(&self) -> Option<String> {
        let out = self.run(&["config", "--get", "remote.origin.url"]).ok()?;
        let url = String::from_utf8_lossy(&out).trim().to_owned();
        (!url.is_empty()).then_some(url)
    }

    /// Every file below `path` (empty for the root) at `commit`, recursively.
    pub fn list_tree(&self, commit: &str, path: &str) -> Result<Vec<TreeEntry>, GitError> {
        let path = path.trim_matches('/');
        let treeish = format!("{commit}:{path}");
        let kind = self.run(&["cat-file", "-t", "--end-of-options", &treeish]);
        if !matches!(&kind, Ok(k) if k.trim_ascii() == b"tree") {
            return Err(GitError::NoSuchPath {
                repo: self.path.clone(),
                commit: commit.to_owned(),
                path: path.to_owned(),
            });
        }
        let out = self.run(&["ls-tree", "-r", "-z", "--end-of-options", &treeish])?;
        let mut entries = Vec::new();
        for record in out.split(|&b| b == 0).filter(|r| !r.is_empty()) {
            // "<mode> SP <type> SP <oid> TAB <path>"
            let protocol = |detail: &str| GitError::Protocol {
                repo: self.path.clone(),
                args: "ls-tree".to_owned(),
                detail: detail.to_owned(),
            };
            let tab = record
                .iter()
                .position(|&b| b == b'\t')
                .ok_or_else(|| protocol("no tab"))?;
            let meta = std::str::from_utf8(&record[..tab]).map_err(|_| protocol("non-UTF-8 mode"))?;
            let path = std::str::from_utf8(&record[tab + 1..]).map_err(|_| GitError::Protocol {
                repo: self.path.clone(),
                args: "ls-tree".to_owned(),
                detail: format!(
                    "file name is not UTF-8: {:?}",
                    String::from_utf8_lossy(&record[tab + 1..])
                ),
            })?;
            let mut parts = meta.split(' ');
            let (Some(mode), Some(_type), Some(oid)) = (parts.next(), parts.next(), parts.next()) else {
                return Err(protocol("short record"));
            };
            let kind = match mode {
                "100644" | "100755" => EntryKind::File,
                "120000" => EntryKind::Symlink,
                "160000" => EntryKind::Submodule,
                other => return Err(protocol(&format!("unknown mode {other}"))),
            };
            // The listed path prefix is checked too: it is ours, but the entries are not.
            if let Err(problem) = skiff_proto::bundle::check_path(path) {
                return Err(GitError::UnsafePath {
                    repo: self.path.clone(),
                    commit: commit.to_owned(),
                    path: path.to_owned(),
                    problem,
                });
            }
            entries.push(TreeEntry {
                path: path.to_owned(),
                kind,
                oid: oid.to_owned(),
            });
        }
        Ok(entries)
    }

    /// Starts `git cat-file` in a batch mode and writes `oids` to it from a thread (git
    /// answers while we still write, and both pipes could fill).
    fn cat_file(
        &self,
        args: &[&str],
        oids: &[&str],
    ) -> Result<(std::process::Child, std::thread::JoinHandle<std::io::Result<()>>), GitError> {
        let mut child = self
            .command()
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|source| GitError::Spawn {
                repo: self.path.clone(),
                source,
            })?;
        let mut stdin = child.stdin.take().expect("piped");
        let request: String = oids.iter().map(|oid| format!("{oid}\n")).collect();
        let writer = std::thread::spawn(move || stdin.write_all(request.as_bytes()));
        Ok((child, writer))
    }

    /// The sizes of blobs, in the order asked, through one `git cat-file --batch-check`:
    /// what reading them would cost, known before reading.
    pub fn blob_sizes(&self, oids: &[&str]) -> Result<Vec<u64>, GitError> {
        if oids.is_empty() {
            return Ok(Vec::new());
        }
        let (mut child, writer) = self.cat_file(&["cat-file", "--batch-check"], oids)?;
        let mut out = String::new();
        let read = child.stdout.take().expect("piped").read_to_string(&mut out);
        let _ = writer.join();
        let _ = child.wait();
        let protocol = |detail: String| GitError::Protocol {
            repo: self.path.clone(),
            args: "cat-file --batch-check".to_owned(),
            detail,
        };
        read.map_err(|e| protocol(e.to_string()))?;
        let sizes: Vec<u64> = out
            .lines()
            .map(
                |line| match line.split_whitespace().collect::<Vec<_>>().as_slice() {
                    [_, "blob", size] => size.parse().map_err(|_| protocol(line.to_owned())),
                    _ => Err(protocol(format!("not a blob: {line}"))),
                },
            )
            .collect::<Result<_, _>>()?;
        if sizes.len() != oids.len() {
            return Err(protocol(format!(
                "{} answers for {} objects",
                sizes.len(),
                oids.len()
            )));
        }
        Ok(sizes)
    }

    /// The contents of blobs, in the order asked, through one `git cat-file --batch`.
    /// Callers check [`Self::blob_sizes`] against their budget first.
    pub fn read_blobs(&self, oids: &[&str]) -> Result<Vec<Vec<u8>>, GitError> {
        if oids.is_empty() {
            return Ok(Vec::new());
        }
        let (mut child, writer) = self.cat_file(&["cat-file", "--batch"], oids)?;
        let mut stdout = BufReader::new(child.stdout.take().expect("piped"));
        let protocol = |detail: String| GitError::Protocol {
            repo: self.path.clone(),
            args: "cat-file --batch".to_owned(),
            detail,
        };
        let mut blobs = Vec::with_capacity(oids.len());
        for oid in oids {
            let mut header = String::new();
            stdout
                .read_line(&mut header)
                .map_err(|e| protocol(e.to_string()))?;
            // "<oid> blob <size>\n" or "<oid> missing\n"
            let fields: Vec<&str> = header.split_whitespace().collect();
            let size = match fields.as_slice() {
                [_, "blob", size] => size.parse::<usize>().map_err(|e| protocol(e.to_string()))?,
                _ => return Err(protocol(format!("object {oid}: {}", header.trim()))),
            };
            let mut blob = vec![0u8; size + 1];
            stdout
                .read_exact(&mut blob)
                .map_err(|e| protocol(e.to_string()))?;
            blob.pop(); // the newline after each object
            blobs.push(blob);
        }
        let _ = writer.join();
        let _ = child.wait();
        Ok(blobs)
    }
}

/// A repository URL fit for a bundle, a log or a report: user info (`user:token@`) and any
/// query string or fragment removed. scp-like addresses (`git@host:org/repo`) are kept.
pub fn strip_credentials(url: &str) -> String {
    let url = url.split(['?', '#']).next().unwrap_or(url);
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let host = authority.rsplit_once('@').map_or(authority, |(_, host)| host);
    format!("{scheme}://{host}{path}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_are_stripped_from_urls() {
        assert_eq!(
            strip_credentials("https://user:ghp_secret@github.com/org/fleet.git?token=x#frag"),
            "https://github.com/org/fleet.git"
        );
        assert_eq!(
            strip_credentials("ssh://git@host:2222/fleet"),
            "ssh://host:2222/fleet"
        );
        assert_eq!(
            strip_credentials("git@github.com:org/fleet.git"),
            "git@github.com:org/fleet.git"
        );
        assert_eq!(
            strip_credentials("file:///srv/git/fleet.git"),
            "file:///srv/git/fleet.git"
        );
    }
}
