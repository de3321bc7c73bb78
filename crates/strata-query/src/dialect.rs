//! Strata's SQL dialect: DataFusion's generic dialect plus table versioning.
//!
//! sqlparser parses `t VERSION AS OF 12`, `t TIMESTAMP AS OF '…'` and
//! `t FOR SYSTEM_TIME AS OF '…'` only for dialects that allow table versioning, and its
//! `VERSION AS OF` takes a number. [`StrataDialect`] is the generic dialect with
//! versioning on (it reports itself as the generic dialect, so every generic-only rule
//! of the parser still applies), and [`tag_markers`] lets `VERSION AS OF 'tag'` through
//! by swapping the tag for a marker number before parsing.

use std::any::TypeId;

use datafusion::sql::sqlparser::dialect::{Dialect, GenericDialect};
use datafusion::sql::sqlparser::tokenizer::{Token, Tokenizer};

/// The generic dialect with table versioning.
#[derive(Debug, Default, Clone, Copy)]
pub struct StrataDialect;

macro_rules! generic {
    ($($name:ident),* $(,)?) => {
        $(fn $name(&self) -> bool { GenericDialect.$name() })*
    };
}

impl Dialect for StrataDialect {
    fn dialect(&self) -> TypeId {
        TypeId::of::<GenericDialect>()
    }

    fn supports_table_versioning(&self) -> bool {
        true
    }

    fn is_delimited_identifier_start(&self, ch: char) -> bool {
        GenericDialect.is_delimited_identifier_start(ch)
    }

    fn is_identifier_start(&self, ch: char) -> bool {
        GenericDialect.is_identifier_start(ch)
    }

    fn is_identifier_part(&self, ch: char) -> bool {
        GenericDialect.is_identifier_part(ch)
    }

    generic!(
        supports_unicode_string_literal,
        supports_partition_by_after_order_by,
        supports_array_join_syntax,
        supports_group_by_expr,
        supports_group_by_with_modifier,
        supports_left_associative_joins_without_parens,
        supports_connect_by,
        supports_match_recognize,
        supports_pipe_operator,
        supports_start_transaction_modifier,
        supports_window_function_null_treatment_arg,
        supports_dictionary_syntax,
        supports_window_clause_named_window_reference,
        supports_parenthesized_set_variables,
        supports_select_wildcard_except,
        support_map_literal_syntax,
        allow_extract_custom,
        allow_extract_single_quotes,
        supports_extract_comma_syntax,
        supports_create_view_comment_syntax,
        supports_parens_around_table_factor,
        supports_values_as_table_factor,
        supports_create_index_with_clause,
        supports_explain_with_utility_options,
        supports_limit_comma,
        supports_update_order_by,
        supports_from_first_select,
        supports_projection_trailing_commas,
        supports_asc_desc_in_column_definition,
        supports_try_convert,
        supports_bitwise_shift_operators,
        supports_comment_on,
        supports_load_extension,
        supports_named_fn_args_with_assignment_operator,
        supports_struct_literal,
        supports_empty_projections,
        supports_nested_comments,
        supports_multiline_comment_hints,
        supports_user_host_grantee,
        supports_string_escape_constant,
        supports_array_typedef_with_brackets,
        supports_match_against,
        supports_set_names,
        supports_comma_separated_set_assignments,
        supports_filter_during_aggregation,
        supports_select_wildcard_exclude,
        supports_data_type_signed_suffix,
        supports_interval_options,
        supports_quote_delimited_string,
        supports_select_wildcard_replace,
        supports_select_wildcard_ilike,
        supports_select_wildcard_rename,
        supports_optimize_table,
        supports_install,
        supports_detach,
        supports_prewhere,
        supports_with_fill,
        supports_limit_by,
        supports_interpolate,
        supports_settings,
        supports_select_format,
        supports_comment_optimizer_hint,
        supports_constraint_keyword_without_name,
        supports_key_column_option,
        supports_comma_separated_trim,
        supports_cte_without_as,
        supports_select_item_multi_column_alias,
        supports_xml_expressions,
    );
}

/// Marker numbers stand for tags: no version number is this large (it overflows u64),
/// so a marker can never be mistaken for a real version.
const MARKER_PREFIX: &str = "918273645546372819";

/// The SQL text with every `VERSION AS OF 'tag'` (or `VERSION AS OF tag_name`) replaced
/// by `VERSION AS OF <marker>`, and the tags in marker order. Text the tokenizer
/// rejects is returned unchanged (the parser then reports the error).
pub fn tag_markers(sql: &str) -> (String, Vec<String>) {
    let Ok(mut tokens) = Tokenizer::new(&StrataDialect, sql).tokenize() else {
        return (sql.to_string(), vec![]);
    };
    let mut tags = Vec::new();
    let significant: Vec<usize> = tokens
        .iter()
        .enumerate()
        .filter(|(_, t)| !matches!(t, Token::Whitespace(_)))
        .map(|(i, _)| i)
        .collect();
    for w in significant.windows(4) {
        let is_word = |i: usize, kw: &str| {
            matches!(&tokens[w[i]], Token::Word(word)
                if word.quote_style.is_none() && word.value.eq_ignore_ascii_case(kw))
        };
        if !(is_word(0, "VERSION") && is_word(1, "AS") && is_word(2, "OF")) {
            continue;
        }
        let tag = match &tokens[w[3]] {
            Token::SingleQuotedString(s) | Token::DoubleQuotedString(s) => s.clone(),
            Token::Word(word) => word.value.clone(),
            _ => continue,
        };
        tokens[w[3]] = Token::Number(format!("{MARKER_PREFIX}{}", tags.len()), false);
        tags.push(tag);
    }
    if tags.is_empty() {
        return (sql.to_string(), tags);
    }
    (tokens.iter().map(|t| t.to_string()).collect(), tags)
}

/// The tag a marker number stands for.
pub fn marker_tag<'a>(number: &str, tags: &'a [String]) -> Option<&'a str> {
    let i: usize = number.strip_prefix(MARKER_PREFIX)?.parse().ok()?;
    tags.get(i).map(String::as_str)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_become_markers_and_back() {
        let (sql, tags) =
            tag_markers("SELECT * FROM a VERSION AS OF 'v1.0' JOIN b version as of nightly");
        assert_eq!(tags, vec!["v1.0".to_string(), "nightly".to_string()]);
        assert!(!sql.contains("v1.0") && !sql.contains("nightly"), "{sql}");
        let markers: Vec<&str> = sql
            .split_whitespace()
            .filter(|w| w.starts_with(MARKER_PREFIX))
            .collect();
        assert_eq!(marker_tag(markers[0], &tags), Some("v1.0"));
        assert_eq!(marker_tag(markers[1], &tags), Some("nightly"));
        assert_eq!(marker_tag("12", &tags), None);
    }

    #[test]
    fn numbers_and_strings_elsewhere_are_untouched() {
        let q = "SELECT 'VERSION AS OF x' FROM t VERSION AS OF 3 WHERE s = 'a'";
        assert_eq!(tag_markers(q), (q.to_string(), vec![]));
    }
}
