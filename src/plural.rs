//! Counts in messages: `1 problem`, `2 problems`. Every message that prints a number
//! before a noun goes through [`count`], so none says "1 problems".

/// `n` followed by the noun in the form that agrees with it: `one` for 1, `many` for
/// every other number (0 included: "0 messages").
pub fn count(n: u64, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_is_singular_and_every_other_number_plural() {
        assert_eq!(count(1, "problem", "problems"), "1 problem");
        assert_eq!(count(0, "message", "messages"), "0 messages");
        assert_eq!(count(2, "match", "matches"), "2 matches");
    }
}
