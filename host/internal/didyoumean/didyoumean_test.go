package didyoumean

import "testing"

func TestClosest(t *testing.T) {
	known := []string{"script", "stage", "idle_count", "needs", "when"}
	tests := map[string]string{
		"scrpit": "script", "IdleCount": "idle_count", "idle-count": "idle_count", "stgae": "stage",
		"wen": "when", "xyz": "", "nedes": "needs", "completely-different": "",
	}
	for in, want := range tests {
		if got := Closest(in, known); got != want {
			t.Errorf("Closest(%q) = %q, want %q", in, got, want)
		}
	}
}
