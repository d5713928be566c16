package executors

import (
	"bytes"
	"strings"
	"testing"
)

func TestMaskWriter(t *testing.T) {
	tests := []struct {
		name    string
		secrets []string
		chunks  []string
		want    string
	}{
		{"whole", []string{"hunter2"}, []string{"pw=hunter2\n"}, "pw=[MASKED]\n"},
		{"split across writes", []string{"hunter2"}, []string{"pw=hun", "ter2 ok"}, "pw=[MASKED] ok"},
		{"byte by byte", []string{"s3cr3t"}, strings.Split("a s3cr3t b", ""), "a [MASKED] b"},
		{"overlapping secrets, longest wins", []string{"abc", "abcdef"}, []string{"xabcdefx abc"}, "x[MASKED]x [MASKED]"},
		{"secret at the very end", []string{"tail"}, []string{"the tail"}, "the [MASKED]"},
		{"no secrets", nil, []string{"plain"}, "plain"},
		{"partial prefix is kept", []string{"hunter2"}, []string{"hunt"}, "hunt"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var out bytes.Buffer
			w := NewMaskWriter(&out, tt.secrets)
			for _, c := range tt.chunks {
				if _, err := w.Write([]byte(c)); err != nil {
					t.Fatal(err)
				}
			}
			if err := w.Close(); err != nil {
				t.Fatal(err)
			}
			if out.String() != tt.want {
				t.Errorf("got %q, want %q", out.String(), tt.want)
			}
		})
	}
}
