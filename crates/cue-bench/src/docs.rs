//! The generated section of `docs/benchmarks.md`: between two marker lines, replaced on
//! every `cue-bench --docs PATH` run; the hand-written sections around it are kept.

use anyhow::bail;

pub const BEGIN: &str = "<!-- cue-bench:begin -->";
pub const END: &str = "<!-- cue-bench:end -->";

/// Words joined into one shell command line, each quoted if the shell would split or
/// expand it.
pub fn shell_words<S: AsRef<str>>(words: &[S]) -> String {
    words
        .iter()
        .map(|w| {
            let w = w.as_ref();
            let plain = !w.is_empty()
                && w.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "_-./=:,@%+".contains(c));
            if plain {
                w.to_string()
            } else {
                format!("'{}'", w.replace('\'', r"'\''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// The command line this process was started with.
pub fn command_line() -> String {
    shell_words(&std::env::args().collect::<Vec<_>>())
}

/// `text` in a fenced code block whose fence is longer than any run of backticks in it.
pub fn fenced(text: &str, info: &str) -> String {
    let mut longest = 0;
    let mut run = 0;
    for c in text.chars() {
        run = if c == '`' { run + 1 } else { 0 };
        longest = longest.max(run);
    }
    let fence = "`".repeat((longest + 1).max(3));
    let body = text.trim_end_matches('\n');
    format!("{fence}{info}\n{body}\n{fence}\n")
}

/// The CPU model (first `model name` of /proc/cpuinfo) and the kernel release.
pub fn machine() -> String {
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| {
                Some(
                    l.strip_prefix("model name")?
                        .split_once(':')?
                        .1
                        .trim()
                        .to_string(),
                )
            })
        })
        .unwrap_or_else(|| "unknown CPU".to_string());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".to_string());
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    format!("{cores} cores ({model}), Linux {kernel}")
}

/// The whole /proc/loadavg line's three averages.
pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|| "unknown".to_string())
}

/// Now, UTC, to the minute.
pub fn utc_now() -> String {
    let now = time::OffsetDateTime::now_utc();
    let format = time::macros::format_description!("[year]-[month]-[day] [hour]:[minute] UTC");
    now.format(&format).unwrap_or_else(|_| now.to_string())
}

/// `doc` with the lines between the marker lines replaced by `section`; without markers,
/// `doc` with a new section "Latest cue-bench run" holding them appended.
pub fn splice(doc: &str, section: &str) -> anyhow::Result<String> {
    let section = if section.ends_with('\n') {
        section.to_string()
    } else {
        format!("{section}\n")
    };
    let lines: Vec<&str> = doc.split_inclusive('\n').collect();
    let begin = lines.iter().position(|l| l.trim() == BEGIN);
    let end = lines.iter().position(|l| l.trim() == END);
    match (begin, end) {
        (Some(b), Some(e)) if b < e => {
            let mut out: String = lines[..=b].concat();
            if !out.ends_with('\n') {
                out.push('\n');
            }
            out.push_str(&section);
            out.push_str(&lines[e..].concat());
            Ok(out)
        }
        (None, None) => {
            let mut out = doc.to_string();
            if !out.is_empty() && !out.ends_with('\n') {
                out.push('\n');
            }
            if !out.is_empty() {
                out.push('\n');
            }
            out.push_str(&format!(
                "## Latest cue-bench run\n\n{BEGIN}\n{section}{END}\n"
            ));
            Ok(out)
        }
        _ => bail!("the markers {BEGIN} and {END} must both be there, in that order"),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn splice_replaces_between_the_markers_and_keeps_the_rest() {
        let doc = format!("# t\n\nintro\n{BEGIN}\nold\nolder\n{END}\n\n## history\nkept\n");
        let out = splice(&doc, "new").unwrap();
        assert_eq!(
            out,
            format!("# t\n\nintro\n{BEGIN}\nnew\n{END}\n\n## history\nkept\n")
        );
        // Again: idempotent in shape.
        assert_eq!(splice(&out, "new").unwrap(), out);
    }

    #[test]
    fn splice_appends_a_section_without_markers() {
        let out = splice("# t\nbody", "new\n").unwrap();
        assert_eq!(
            out,
            format!("# t\nbody\n\n## Latest cue-bench run\n\n{BEGIN}\nnew\n{END}\n")
        );
        assert!(splice(&format!("{END}\n{BEGIN}\n"), "x").is_err());
        assert!(splice(&format!("{BEGIN}\n"), "x").is_err());
    }

    #[test]
    fn words_are_quoted_for_the_shell() {
        assert_eq!(
            shell_words(&["cue-bench", "--docs", "docs/b.md", "a b", "it's", ""]),
            r"cue-bench --docs docs/b.md 'a b' 'it'\''s' ''"
        );
        assert_eq!(fenced("a ``` b", "text"), "````text\na ``` b\n````\n");
    }
}
