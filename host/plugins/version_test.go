package plugins

import (
	"reflect"
	"testing"
)

func TestConstraintSelect(t *testing.T) {
	tags := []string{"0.9.0", "1.0.0", "1.2.0", "1.2.7", "1.10.1", "2.0.0-rc.1", "1.11.0-beta", "0.0.0-bleeding", "v3.0.0", "latest", "01.0.0", "sha256-abc"}
	tests := []struct {
		constraint string
		want       string // "" means no match
	}{
		{"latest", "1.10.1"},
		{"1", "1.10.1"},
		{"1.2", "1.2.7"},
		{"1.2.0", "1.2.0"},
		{"0", "0.9.0"},
		{"2", ""}, // only a pre-release of 2 exists
		{"2.0.0-rc.1", "2.0.0-rc.1"},
		{"0.0.0-bleeding", "0.0.0-bleeding"},
		{"1.11", ""}, // 1.11.0-beta is a pre-release
		{"3", ""},    // v3.0.0 is not a valid tag
		{"1.2.8", ""},
	}
	for _, tt := range tests {
		t.Run(tt.constraint, func(t *testing.T) {
			c, err := ParseConstraint(tt.constraint)
			if err != nil {
				t.Fatal(err)
			}
			v, ok := c.Select(tags)
			got := ""
			if ok {
				got = v.String()
			}
			if got != tt.want {
				t.Fatalf("Select(%s) = %q, want %q", tt.constraint, got, tt.want)
			}
		})
	}
}

func TestVersionCompare(t *testing.T) {
	// Ascending by semver precedence (semver.org §11 example plus numeric ordering).
	order := []string{"1.0.0-alpha", "1.0.0-alpha.1", "1.0.0-alpha.beta", "1.0.0-beta", "1.0.0-beta.2", "1.0.0-beta.11", "1.0.0-rc.1", "1.0.0", "1.2.0", "1.10.0", "2.0.0"}
	for i := range order {
		for j := range order {
			a, _ := ParseVersion(order[i])
			b, err := ParseVersion(order[j])
			if err != nil {
				t.Fatal(err)
			}
			want := 0
			if i < j {
				want = -1
			} else if i > j {
				want = 1
			}
			if got := a.Compare(b); got != want {
				t.Errorf("Compare(%s, %s) = %d, want %d", order[i], order[j], got, want)
			}
		}
	}
	if got := SortVersions([]string{"1.0.0", "junk", "1.10.0", "1.2.0"}); !reflect.DeepEqual(got, []string{"1.10.0", "1.2.0", "1.0.0"}) {
		t.Errorf("SortVersions = %v", got)
	}
}

func TestParseVersionRejects(t *testing.T) {
	for _, s := range []string{"", "1", "1.2", "v1.2.3", "1.2.3+build", "1.2.3-", "1.2.3-a..b", "1.02.3", "1.2.3-01", "1.2.x"} {
		if _, err := ParseVersion(s); err == nil {
			t.Errorf("ParseVersion(%q) accepted", s)
		}
	}
}
