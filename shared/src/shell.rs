//! Text for a POSIX shell: scripts the coordinator sends to hosts, commands
//! the agent builds, the bootstrap script.

/// `s` quoted for a POSIX shell: one word, whatever it holds.
pub fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoted_words_stay_one_word() {
        assert_eq!(quote("a b"), "'a b'");
        assert_eq!(quote("it's"), "'it'\\''s'");
        assert_eq!(quote(""), "''");
    }
}
