package jobs

import "testing"

func TestVariables(t *testing.T) {
	v := Variables{
		{Key: "DIR", Value: "/builds/p"},
		{Key: "CACHE", Value: "$DIR/.cache"},
		{Key: "BRACED", Value: "${DIR}-x"},
		{Key: "UNKNOWN", Value: "a${NOPE}b"},
		{Key: "DOLLAR", Value: "cost $$5"},
		{Key: "DIR", Value: "/other"},
		{Key: "LATER", Value: "$DIR"},
		{Key: "SECRET", Value: "hunter2", Masked: true},
	}
	e := v.Expanded()
	want := map[string]string{"CACHE": "/builds/p/.cache", "BRACED": "/builds/p-x", "UNKNOWN": "ab", "DOLLAR": "cost $5", "LATER": "/other"}
	for k, w := range want {
		if got, _ := e.Get(k); got != w {
			t.Errorf("%s = %q, want %q", k, got, w)
		}
	}
	if got, _ := v.Get("DIR"); got != "/other" {
		t.Errorf("Get returns the last definition, got %q", got)
	}
	if eff := v.Effective(); len(eff) != 7 {
		t.Errorf("Effective has %d entries, want 7 (DIR once)", len(eff))
	}
	if m := v.MaskedValues(); len(m) != 1 || m[0] != "hunter2" {
		t.Errorf("MaskedValues = %q", m)
	}
}
