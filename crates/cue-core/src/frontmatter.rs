//! Splitting a Markdown file into YAML frontmatter blocks and a body, losslessly.
//!
//! YAML emitters reformat (flow lists become block lists, comments vanish), so cue never
//! re-emits YAML it did not change. Instead the frontmatter is cut into *blocks*, one per
//! top-level key, each holding its exact source lines. A block whose value is a list of
//! scalars is cut further into item lines, so that list items can be merged as a set.
//! Concatenating the pieces always gives back the original bytes.
//!
//! The YAML parser (saphyr) is used only to *check* the frontmatter: that it is a mapping
//! with string keys, and that our line-based cut agrees with what a YAML parser sees. When
//! it does not, the frontmatter is treated as plain text (docs/reference.md §3.1).

use saphyr::{LoadableYamlNode, Scalar, Yaml};

/// A Markdown file cut into its parts. `render` gives back the exact input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Markdown {
    pub frontmatter: Option<Frontmatter>,
    pub body: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frontmatter {
    /// The opening delimiter line, with its line ending (`---\n` or `---\r\n`).
    pub open: String,
    /// The closing delimiter line, with its line ending if it has one.
    pub close: String,
    pub content: FrontmatterContent,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FrontmatterContent {
    /// Valid YAML mapping: lines before the first key, then one block per key.
    Yaml {
        preamble: String,
        blocks: Vec<Block>,
    },
    /// Not valid YAML (or a shape we do not split): merged as plain text.
    Raw(String),
}

/// One top-level key of the frontmatter with its exact source lines.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Block {
    pub key: String,
    pub value: BlockValue,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BlockValue {
    /// Any value that is not a list of scalars: merged as one unit, last writer wins.
    Scalar(String),
    /// A list of scalars: `head` + items + `tail` (block style) or
    /// `head` + items joined by `sep` + `tail` (flow style, `[a, b]`).
    List(List),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct List {
    pub flow: bool,
    pub head: String,
    pub items: Vec<Item>,
    pub sep: String,
    pub tail: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Item {
    /// The item's exact text: a whole line (`  - foo\n`) in block style, the token in flow style.
    pub raw: String,
    /// The item's value in a canonical form, used to keep list items unique.
    pub value: String,
}

impl Markdown {
    pub fn render(&self) -> String {
        let mut out = String::new();
        if let Some(fm) = &self.frontmatter {
            out.push_str(&fm.open);
            match &fm.content {
                FrontmatterContent::Raw(raw) => out.push_str(raw),
                FrontmatterContent::Yaml { preamble, blocks } => {
                    out.push_str(preamble);
                    for b in blocks {
                        b.render_into(&mut out);
                    }
                }
            }
            out.push_str(&fm.close);
        }
        out.push_str(&self.body);
        out
    }
}

impl Block {
    pub fn render(&self) -> String {
        let mut out = String::new();
        self.render_into(&mut out);
        out
    }

    fn render_into(&self, out: &mut String) {
        match &self.value {
            BlockValue::Scalar(raw) => out.push_str(raw),
            BlockValue::List(list) => list.render_into(out),
        }
    }
}

impl List {
    pub fn render_into(&self, out: &mut String) {
        out.push_str(&self.head);
        for (i, item) in self.items.iter().enumerate() {
            if self.flow && i > 0 {
                out.push_str(&self.sep);
            }
            out.push_str(&item.raw);
        }
        out.push_str(&self.tail);
    }
}

/// Does this path name a Markdown file (whose frontmatter cue merges key by key)?
pub fn is_markdown_path(path: &str) -> bool {
    let lower = path.rsplit('/').next().unwrap_or(path).to_ascii_lowercase();
    lower.ends_with(".md") || lower.ends_with(".markdown") || lower.ends_with(".mdx")
}

/// Cut a Markdown text into frontmatter and body. Never fails: text without a
/// well-delimited frontmatter is all body.
pub fn parse(text: &str) -> Markdown {
    let Some((open, rest)) = split_line(text) else {
        return body_only(text);
    };
    if open.trim_end_matches(['\n', '\r']) != "---" || !open.ends_with('\n') {
        return body_only(text);
    }
    // Find the closing delimiter line.
    let mut offset = 0;
    let mut remaining = rest;
    while let Some((line, after)) = split_line(remaining) {
        let bare = line.trim_end_matches(['\n', '\r']);
        if bare == "---" || bare == "..." {
            let inner = &rest[..offset];
            let close = line.to_string();
            let body = after.to_string();
            return Markdown {
                frontmatter: Some(Frontmatter {
                    open: open.to_string(),
                    close,
                    content: parse_content(inner),
                }),
                body,
            };
        }
        offset += line.len();
        remaining = after;
    }
    body_only(text)
}

fn body_only(text: &str) -> Markdown {
    Markdown {
        frontmatter: None,
        body: text.to_string(),
    }
}

/// The first line of `s` including its `\n`, and the rest. `None` for an empty string.
fn split_line(s: &str) -> Option<(&str, &str)> {
    if s.is_empty() {
        return None;
    }
    match s.find('\n') {
        Some(i) => Some((&s[..=i], &s[i + 1..])),
        None => Some((s, "")),
    }
}

fn lines(s: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut rest = s;
    while let Some((line, after)) = split_line(rest) {
        out.push(line);
        rest = after;
    }
    out
}

/// A line that starts a new top-level key: not indented, not a comment, not a list item,
/// not blank.
fn starts_key(line: &str) -> bool {
    match line.chars().next() {
        None | Some(' ' | '\t' | '#' | '-' | '\n' | '\r') => false,
        Some(_) => true,
    }
}

fn load(text: &str) -> Option<Yaml<'_>> {
    let mut docs = Yaml::load_from_str(text).ok()?;
    if docs.len() > 1 {
        return None;
    }
    Some(docs.pop().unwrap_or(Yaml::BadValue))
}

fn scalar_text(y: &Yaml<'_>) -> Option<String> {
    match y {
        Yaml::Value(Scalar::String(s)) => Some(s.to_string()),
        Yaml::Value(Scalar::Integer(i)) => Some(i.to_string()),
        Yaml::Value(Scalar::Boolean(b)) => Some(b.to_string()),
        Yaml::Value(Scalar::FloatingPoint(f)) => Some(f.to_string()),
        Yaml::Value(Scalar::Null) => Some("~".to_string()),
        Yaml::Representation(s, _, _) => Some(s.to_string()),
        _ => None,
    }
}

/// Longest value `display_value` shows, in characters, before it cuts with `…`.
const DISPLAY_CHARS: usize = 60;

/// A top-level key's value as a person reads it, from its block's exact source lines
/// (`title: "Done"\n` gives `Done`): a scalar's text without YAML quoting, anything else
/// (a nested mapping, a block scalar) its source after the key on one line; at most 60
/// characters. Used to name the kept and set-aside values of a frontmatter conflict.
pub fn display_value(block: &str) -> String {
    let scalar = match load(block) {
        Some(Yaml::Mapping(m)) if m.len() == 1 => m.values().next().and_then(|v| match v {
            Yaml::Value(Scalar::Null) => Some(String::new()),
            Yaml::Representation(s, _, _) if s.trim() == "~" || s.trim() == "null" => {
                Some(String::new())
            }
            other => scalar_text(other),
        }),
        _ => None,
    };
    let text = scalar.unwrap_or_else(|| {
        let after_key = block.split_once(':').map_or(block, |(_, v)| v);
        after_key
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect::<Vec<_>>()
            .join(" ")
    });
    if text.chars().count() <= DISPLAY_CHARS {
        return text;
    }
    let mut cut: String = text.chars().take(DISPLAY_CHARS - 1).collect();
    cut.push('…');
    cut
}

fn parse_content(inner: &str) -> FrontmatterContent {
    split_yaml(inner).unwrap_or_else(|| FrontmatterContent::Raw(inner.to_string()))
}

fn split_yaml(inner: &str) -> Option<FrontmatterContent> {
    // An empty frontmatter is a valid, empty mapping.
    let whole = load(inner)?;
    let keys: Vec<String> = match &whole {
        Yaml::Mapping(m) => m.keys().map(scalar_text).collect::<Option<_>>()?,
        Yaml::BadValue => Vec::new(),
        Yaml::Value(Scalar::Null) if inner.trim().is_empty() => Vec::new(),
        _ => return None,
    };
    let all = lines(inner);
    let mut preamble = String::new();
    let mut chunks: Vec<Vec<&str>> = Vec::new();
    for line in all {
        if starts_key(line) {
            chunks.push(vec![line]);
        } else if let Some(last) = chunks.last_mut() {
            last.push(line);
        } else {
            preamble.push_str(line);
        }
    }
    if chunks.len() != keys.len() {
        return None;
    }
    let mut blocks = Vec::with_capacity(chunks.len());
    for (chunk, key) in chunks.into_iter().zip(keys) {
        blocks.push(split_block(&chunk, key)?);
    }
    Some(FrontmatterContent::Yaml { preamble, blocks })
}

/// Cut one key's lines. Each block must parse on its own as a one-key mapping with the key
/// the whole document gave it; otherwise (anchors shared across keys, say) the caller
/// falls back to plain text.
fn split_block(chunk: &[&str], key: String) -> Option<Block> {
    let raw: String = chunk.concat();
    let parsed = load(&raw)?;
    let Yaml::Mapping(map) = &parsed else {
        return None;
    };
    if map.len() != 1 {
        return None;
    }
    let (k, v) = map.iter().next()?;
    if scalar_text(k)? != key {
        return None;
    }
    let values: Option<Vec<String>> = match v {
        Yaml::Sequence(seq) if !seq.is_empty() => seq.iter().map(canonical_scalar).collect(),
        _ => None,
    };
    drop(parsed);
    // A list with repeated values is kept whole: merged as a set it would lose a repeat
    // and no longer give back the bytes the user wrote.
    let unique = values.as_ref().is_some_and(|vs| {
        let set: std::collections::BTreeSet<&String> = vs.iter().collect();
        set.len() == vs.len()
    });
    let value = match values
        .filter(|_| unique)
        .and_then(|values| cut_list(chunk, &raw, &values))
    {
        Some(list) => BlockValue::List(list),
        None => BlockValue::Scalar(raw),
    };
    Some(Block { key, value })
}

/// A canonical text for a scalar list item, so `"a"`, `'a'` and `a` count as one item.
fn canonical_scalar(y: &Yaml<'_>) -> Option<String> {
    match y {
        Yaml::Value(Scalar::String(s)) => Some(format!("s:{s}")),
        Yaml::Value(Scalar::Integer(i)) => Some(format!("i:{i}")),
        Yaml::Value(Scalar::Boolean(b)) => Some(format!("b:{b}")),
        Yaml::Value(Scalar::FloatingPoint(f)) => Some(format!("f:{f}")),
        Yaml::Value(Scalar::Null) => Some("n:".to_string()),
        Yaml::Representation(s, _, _) => Some(format!("s:{s}")),
        _ => None,
    }
}

/// Whether an item's raw text is a block-style line (`  - foo\n`), not a flow token
/// (`cut_list` takes flow tokens from the key's line only: never a line break).
fn is_block_item(raw: &str) -> bool {
    raw.ends_with('\n')
}

/// An item's canonical value whichever style its raw text is in: an item added to a
/// list that another device restyled at the same time (`[a, b]` to `- a` lines, or
/// back) keeps the style it was written in.
pub fn any_item_value(raw: &str) -> Option<String> {
    item_value(!is_block_item(raw), raw)
}

/// `raw`, an item written in the other style than its list's (`flow`), in the list's
/// style with the same value (block lines indented by `indent`, ended by `eol`).
/// `None` when it is in the list's style already, or when no plain token that
/// `cut_list` reads back holds it (a comment, a comma, quotes).
pub fn restyle_item(raw: &str, flow: bool, indent: &str, eol: &str) -> Option<String> {
    let block = is_block_item(raw);
    if block != flow {
        return None;
    }
    let value = item_value(!block, raw)?;
    let text = if block {
        raw.trim_start().strip_prefix('-')?.trim()
    } else {
        raw.trim()
    };
    let candidate = if flow {
        if text.is_empty() || text.contains([',', '[', ']', '{', '}', '"', '\'', '#']) {
            return None;
        }
        text.to_string()
    } else {
        format!("{indent}- {text}{eol}")
    };
    (item_value(flow, &candidate).as_deref() == Some(value.as_str())).then_some(candidate)
}

/// The items of `list` written in the other style put in its style (see
/// [`restyle_item`]), block lines indented and ended as its other lines are. A flow
/// list holding an item no flow token can hold is shown as block lines instead: valid
/// YAML, with every item (written `[a, b]` again, it is restyled back).
pub fn restyle_items(list: &mut List) {
    // (An item is in the other style when it is a block line in a flow list, or not.)
    if !list
        .items
        .iter()
        .any(|i| is_block_item(&i.raw) == list.flow)
    {
        return;
    }
    let first_block = list.items.iter().find(|i| is_block_item(&i.raw));
    let indent = first_block
        .map(|i| i.raw[..i.raw.len() - i.raw.trim_start().len()].to_string())
        .unwrap_or_else(|| "  ".to_string());
    let eol = if list.head.ends_with("\r\n") || first_block.is_some_and(|i| i.raw.ends_with("\r\n"))
    {
        "\r\n"
    } else {
        "\n"
    };
    let mut stuck = false;
    for item in &mut list.items {
        if is_block_item(&item.raw) == list.flow {
            match restyle_item(&item.raw, list.flow, &indent, eol) {
                Some(raw) => item.raw = raw,
                None => stuck = true,
            }
        }
    }
    if stuck
        && list.flow
        && let Some(block) = as_block(list, &indent, eol)
    {
        *list = block;
    }
}

/// A flow list (`key: [a, b]`) as block lines, its items' values kept; `None` when its
/// head or tail is not the plain `key: [` … `]` line.
fn as_block(list: &List, indent: &str, eol: &str) -> Option<List> {
    let key = list.head.trim_end().strip_suffix('[')?.trim_end();
    let rest = list.tail.strip_prefix(']')?;
    let (line_end, after) = match rest.find('\n') {
        Some(i) => (&rest[..=i], &rest[i + 1..]),
        None => (rest, ""),
    };
    let mut items = Vec::new();
    for item in &list.items {
        if is_block_item(&item.raw) {
            items.push(item.clone());
            continue;
        }
        let raw = format!("{indent}- {}{eol}", item.raw.trim());
        if any_item_value(&raw).as_deref() != Some(item.value.as_str()) {
            return None;
        }
        items.push(Item {
            raw,
            value: item.value.clone(),
        });
    }
    let line_end = if line_end.trim().is_empty() {
        eol
    } else {
        line_end
    };
    Some(List {
        flow: false,
        head: format!("{key}{line_end}"),
        items,
        sep: String::new(),
        tail: after.to_string(),
    })
}

/// The canonical value of one item's raw text, parsed on its own. Used when items from
/// different versions meet and must be compared.
pub fn item_value(flow: bool, raw: &str) -> Option<String> {
    let text = if flow {
        format!("[{raw}]")
    } else {
        raw.to_string()
    };
    match load(&text)? {
        Yaml::Sequence(seq) if seq.len() == 1 => canonical_scalar(&seq[0]),
        _ => None,
    }
}

fn cut_list(chunk: &[&str], raw: &str, values: &[String]) -> Option<List> {
    let first = chunk[0];
    let after_colon = first.find(':').map(|i| &first[i + 1..])?;
    if after_colon.trim().is_empty() || after_colon.trim_start().starts_with('#') {
        // Block style: the key line, then one `- item` line per item, then trailing
        // blank or comment lines.
        let items: Vec<&str> = chunk[1..]
            .iter()
            .copied()
            .take_while(|l| l.trim_start().starts_with('-'))
            .collect();
        if items.len() != values.len() {
            return None;
        }
        let tail: String = chunk[1 + items.len()..].concat();
        if tail.lines().any(|l| {
            let t = l.trim();
            !(t.is_empty() || t.starts_with('#'))
        }) {
            return None;
        }
        let list = List {
            flow: false,
            head: first.to_string(),
            items: items
                .iter()
                .zip(values)
                .map(|(l, v)| Item {
                    raw: l.to_string(),
                    value: v.clone(),
                })
                .collect(),
            sep: String::new(),
            tail,
        };
        return check_list(list, raw, values);
    }
    // Flow style on the key line: `key: [a, b, c]` with plain items and one separator.
    let open = first.find('[')?;
    let close = first.rfind(']')?;
    if close < open {
        return None;
    }
    let inside = &first[open + 1..close];
    if inside.contains(['[', ']', '{', '}', '"', '\'', '#']) {
        return None;
    }
    let sep = if inside.contains(", ") { ", " } else { "," };
    let tokens: Vec<&str> = inside.split(sep).collect();
    if tokens.len() != values.len() || tokens.iter().any(|t| t.trim().is_empty()) {
        return None;
    }
    let list = List {
        flow: true,
        head: first[..=open].to_string(),
        items: tokens
            .iter()
            .zip(values)
            .map(|(t, v)| Item {
                raw: t.to_string(),
                value: v.clone(),
            })
            .collect(),
        sep: sep.to_string(),
        tail: format!("{}{}", &first[close..], chunk[1..].concat()),
    };
    check_list(list, raw, values)
}

/// Keep the cut only if it renders back to the exact text and each item parses alone to
/// the value the whole list gave it.
fn check_list(list: List, raw: &str, values: &[String]) -> Option<List> {
    let mut rendered = String::new();
    list.render_into(&mut rendered);
    if rendered != raw {
        return None;
    }
    for (item, value) in list.items.iter().zip(values) {
        if item_value(list.flow, &item.raw).as_deref() != Some(value.as_str()) {
            return None;
        }
    }
    Some(list)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Items restyled keep their value, as plain tokens `cut_list` reads back; an item
    /// already in its list's style, or one no plain token holds, is left as it is.
    #[test]
    fn items_restyled_keep_their_value() {
        assert_eq!(
            restyle_item("  - a\n", true, "  ", "\n").as_deref(),
            Some("a")
        );
        assert_eq!(restyle_item("  - x, y\n", true, "  ", "\n"), None);
        assert_eq!(restyle_item("  - 8080 # alt\n", true, "  ", "\n"), None);
        assert_eq!(
            restyle_item("it's", false, "    ", "\r\n").as_deref(),
            Some("    - it's\r\n")
        );
        assert_eq!(restyle_item("a", true, "  ", "\n"), None);
        assert_eq!(restyle_item("  - a\n", false, "  ", "\n"), None);
    }

    fn roundtrip(s: &str) -> Markdown {
        let md = parse(s);
        assert_eq!(md.render(), s, "render must give back the input");
        md
    }

    #[test]
    fn a_value_is_shown_as_a_person_reads_it() {
        assert_eq!(display_value("title: Done\n"), "Done");
        assert_eq!(display_value("title: \"Done: at last\"\n"), "Done: at last");
        assert_eq!(display_value("count: 3\n"), "3");
        assert_eq!(display_value("due:\n"), "");
        assert_eq!(
            display_value("owner:\n  name: Ann\n  team: ops\n"),
            "name: Ann team: ops"
        );
        let long = format!("title: {}\n", "x".repeat(100));
        let shown = display_value(&long);
        assert_eq!(shown.chars().count(), 60);
        assert!(shown.ends_with('…'), "{shown}");
    }

    #[test]
    fn plain_body_without_frontmatter() {
        let md = roundtrip("# Title\n\nhello\n");
        assert!(md.frontmatter.is_none());
    }

    #[test]
    fn yaml_blocks_are_cut_per_key() {
        let md = roundtrip(
            "---\ntitle: Plan\n# a comment\ntags:\n  - a\n  - \"b\"\nnested:\n  x: 1\n---\nBody\n",
        );
        let fm = md.frontmatter.unwrap();
        let FrontmatterContent::Yaml { blocks, .. } = fm.content else {
            panic!("expected yaml")
        };
        let keys: Vec<_> = blocks.iter().map(|b| b.key.as_str()).collect();
        assert_eq!(keys, ["title", "tags", "nested"]);
        assert!(
            matches!(blocks[0].value, BlockValue::Scalar(ref s) if s == "title: Plan\n# a comment\n")
        );
        let BlockValue::List(l) = &blocks[1].value else {
            panic!("tags is a list")
        };
        assert_eq!(l.items.len(), 2);
        assert_eq!(l.items[1].value, "s:b");
        assert!(matches!(blocks[2].value, BlockValue::Scalar(_)));
    }

    #[test]
    fn flow_lists_are_cut() {
        let md = roundtrip("---\ntags: [a, b, c] # x\n---\n");
        let FrontmatterContent::Yaml { blocks, .. } = md.frontmatter.unwrap().content else {
            panic!()
        };
        let BlockValue::List(l) = &blocks[0].value else {
            panic!()
        };
        assert!(l.flow);
        assert_eq!(
            l.items.iter().map(|i| i.raw.as_str()).collect::<Vec<_>>(),
            ["a", "b", "c"]
        );
    }

    #[test]
    fn invalid_yaml_is_raw_text() {
        let md = roundtrip("---\ntitle: [unclosed\n---\nbody");
        assert!(matches!(
            md.frontmatter.unwrap().content,
            FrontmatterContent::Raw(_)
        ));
        let md = roundtrip("---\n- a list\n- not a map\n---\n");
        assert!(matches!(
            md.frontmatter.unwrap().content,
            FrontmatterContent::Raw(_)
        ));
    }

    #[test]
    fn unclosed_frontmatter_is_body() {
        let md = roundtrip("---\ntitle: x\nno close");
        assert!(md.frontmatter.is_none());
    }

    #[test]
    fn crlf_and_dots_close() {
        let md = roundtrip("---\r\na: 1\r\n...\r\nbody\r\n");
        assert!(md.frontmatter.is_some());
    }

    #[test]
    fn empty_frontmatter() {
        let md = roundtrip("---\n---\nbody");
        assert!(matches!(
            md.frontmatter.unwrap().content,
            FrontmatterContent::Yaml { ref blocks, .. } if blocks.is_empty()
        ));
    }

    #[test]
    fn duplicate_keys_are_raw() {
        let md = roundtrip("---\na: 1\na: 2\n---\n");
        assert!(matches!(
            md.frontmatter.unwrap().content,
            FrontmatterContent::Raw(_)
        ));
    }

    proptest::proptest! {
        #[test]
        fn any_text_roundtrips(s in "(---\n)?([a-z]{0,3}(: |:\n|\n)(  - [a-z]{1,2}\n)?){0,6}(---\n)?[a-z\n]{0,10}") {
            let md = parse(&s);
            proptest::prop_assert_eq!(md.render(), s);
        }

        #[test]
        fn arbitrary_unicode_roundtrips(s in "\\PC{0,200}") {
            let md = parse(&s);
            proptest::prop_assert_eq!(md.render(), s);
        }
    }
}
