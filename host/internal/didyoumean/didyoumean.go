// Package didyoumean finds the known word a user probably meant, for the "did you mean"
// hints of the config and pipeline checkers. (sdk/plugin keeps its own small copy: the
// SDK imports nothing else of this repository.)
package didyoumean

import (
	"slices"
	"strings"
)

// Closest returns the known word closest to word: the same word ignoring case, dashes
// and underscores (IdleCount vs idle_count), else one within a small edit distance (1
// for words of up to 4 letters, 2 otherwise). It returns "" when nothing is close.
func Closest(word string, known []string) string {
	if best := Nearest(word, known, 1); len(best) > 0 {
		return best[0]
	}
	return ""
}

// Nearest returns up to n known words close to word, closest first: those equal to it
// ignoring case, dashes and underscores, then those within Closest's edit distance,
// ties in alphabetical order. A hint built from it stays short however many words are
// known.
func Nearest(word string, known []string, n int) []string {
	if n <= 0 {
		return nil
	}
	type cand struct {
		word string
		dist int // -1 for a match ignoring case, dashes and underscores
	}
	limit := 2
	if len(word) <= 4 {
		limit = 1
	}
	nw, lw := norm(word), strings.ToLower(word)
	var cands []cand
	for _, c := range known {
		if norm(c) == nw {
			cands = append(cands, cand{c, -1})
			continue
		}
		// The distance is at least the length difference: skip the O(len²) work when
		// that alone is too far.
		lc := strings.ToLower(c)
		if d := len(lc) - len(lw); d > limit || -d > limit {
			continue
		}
		if d := editDistance(lw, lc); d <= limit {
			cands = append(cands, cand{c, d})
		}
	}
	slices.SortFunc(cands, func(a, b cand) int {
		if a.dist != b.dist {
			return a.dist - b.dist
		}
		return strings.Compare(a.word, b.word)
	})
	out := make([]string, 0, min(n, len(cands)))
	for _, c := range cands {
		if len(out) == n {
			break
		}
		if !slices.Contains(out, c.word) {
			out = append(out, c.word)
		}
	}
	return out
}

func norm(s string) string {
	return strings.NewReplacer("_", "", "-", "").Replace(strings.ToLower(s))
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
