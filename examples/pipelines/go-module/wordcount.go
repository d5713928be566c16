// Package wordcount counts words; it exists so that the example pipeline has a real Go
// module to vet, test and build.
package wordcount

import "strings"

// Count returns how many whitespace-separated words s has.
func Count(s string) int { return len(strings.Fields(s)) }
