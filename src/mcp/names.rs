//! How a server's tools are named and described to the model: names that every
//! provider accepts (at most 64 characters of `[A-Za-z0-9_-]`) and that stay the same
//! from one run to the next, so a transcript's tool calls still resolve on resume.

/// The longest function name OpenAI and Anthropic accept.
const NAME_CAP: usize = 64;
/// Characters kept of a tool's description: servers write pages, and every one of
/// them is sent with every model call.
pub const DESCRIPTION_CAP: usize = 1024;

/// `mcp__<server>__<tool>`, with every character outside `[A-Za-z0-9_-]` replaced by
/// `_`. A longer name is cut and ends in `_` and 8 hex digits of a hash of the full
/// original name, so two long names that differ only past the cut stay apart.
pub fn exposed_name(server: &str, tool: &str) -> String {
    let original = format!("mcp__{server}__{tool}");
    let clean: String = original
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if clean.len() <= NAME_CAP {
        return clean;
    }
    let hash = fnv1a(original.as_bytes());
    // Only ASCII is left, so any byte index is a character boundary.
    let kept = &clean[..NAME_CAP - 9];
    format!("{kept}_{:08x}", (hash ^ (hash >> 32)) as u32)
}

/// FNV-1a, 64 bits: tiny, and fixed forever (unlike std's hasher, which may change
/// between Rust releases).
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
        (hash ^ u64::from(*byte)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// The description, cut at [`DESCRIPTION_CAP`] characters.
pub fn cap_description(description: &str) -> String {
    match description.char_indices().nth(DESCRIPTION_CAP) {
        Some((at, _)) => format!("{}…", &description[..at]),
        None => description.to_owned(),
    }
}

/// Whether a tool passes the server's `enabled_tools` / `disabled_tools`.
pub fn selected(name: &str, enabled: Option<&[String]>, disabled: &[String]) -> bool {
    enabled.is_none_or(|enabled| enabled.iter().any(|e| e == name))
        && !disabled.iter().any(|d| d == name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_plain_name_is_prefixed() {
        assert_eq!(exposed_name("time", "get_now"), "mcp__time__get_now");
        assert_eq!(exposed_name("a-b", "C-9"), "mcp__a-b__C-9");
    }

    #[test]
    fn odd_characters_become_underscores() {
        assert_eq!(
            exposed_name("fs", "read.file/v2 é"),
            "mcp__fs__read_file_v2__"
        );
    }

    #[test]
    fn long_names_are_cut_to_64_with_a_stable_hash() {
        let long = "x".repeat(80);
        let name = exposed_name("server", &long);
        assert_eq!(name.len(), 64);
        assert!(name.starts_with("mcp__server__xxx"));
        assert!(
            name[55..56] == *"_" && name[56..].chars().all(|c| c.is_ascii_hexdigit()),
            "{name}"
        );
        assert_eq!(name, exposed_name("server", &long), "stable");
        // Fixed across runs and releases, not only within one process.
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
        let exactly = "y".repeat(64 - "mcp__s__".len());
        assert_eq!(exposed_name("s", &exactly), format!("mcp__s__{exactly}"));
    }

    #[test]
    fn long_names_differing_only_at_the_end_stay_apart() {
        let stem = "z".repeat(70);
        let one = exposed_name("server", &format!("{stem}_one"));
        let two = exposed_name("server", &format!("{stem}_two"));
        assert_ne!(one, two);
        assert_eq!(one[..55], two[..55]);
    }

    #[test]
    fn descriptions_are_capped_on_a_character_boundary() {
        assert_eq!(cap_description("short"), "short");
        let long = "é".repeat(DESCRIPTION_CAP + 5);
        let capped = cap_description(&long);
        assert_eq!(capped.chars().count(), DESCRIPTION_CAP + 1);
        assert!(capped.ends_with('…'));
    }

    #[test]
    fn enabled_and_disabled_tools_filter() {
        let on = vec!["a".to_owned(), "b".to_owned()];
        let off = vec!["b".to_owned()];
        assert!(selected("x", None, &[]));
        assert!(selected("a", Some(&on), &off));
        assert!(!selected("b", Some(&on), &off));
        assert!(!selected("x", Some(&on), &[]));
        assert!(!selected("b", None, &off));
    }
}
