// Package didyoumean finds the known word a user probably meant, for the "did you mean"
// hints of the config and pipeline checkers. (sdk/plugin keeps its own small copy: the
// SDK imports nothing else of this repository.)
package didyoumean

import (
	"sort"
	"strings"
)

// Closest returns the known word closest to word: the same word ignoring case, dashes
// and underscores (IdleCount vs idle_count), else one within a small edit distance (1
// for words of up to 4 letters, 2 otherwise). It returns "" when nothing is close.
func Closest(word string, known []string) string {
	norm := func(s string) string {
		return strings.NewReplacer("_", "", "-", "").Replace(strings.ToLower(s))
	}
	for _, c := range known {
		if norm(c) == norm(word) {
			return c
		}
	}
	limit := 2
	if len(word) <= 4 {
		limit = 1
	}
	best, bestD := "", 0
	sorted := append([]string(nil), known...)
	sort.Strings(sorted)
	for _, c := range sorted {
		d := editDistance(strings.ToLower(word), strings.ToLower(c))
		if d <= limit && (best == "" || d < bestD) {
			best, bestD = c, d
		}
	}
	return best
}

// editDistance is the Levenshtein distance between a and b.
func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}
