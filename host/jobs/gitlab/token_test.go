package gitlab

import "testing"

func TestShortToken(t *testing.T) {
	tests := []struct{ token, want string }{
		{"", ""},
		{"abc", "abc"},
		{"1234567", "1234567"},
		{"12345678", "12345678"},
		{"abcdefghijklmnop", "abcdefgh"},
		{"glrt-t1_abcdefghijklmnop", "t1_abcdef"},
		{"glrt-abc", "abc"}, // shorter than GitLab's slice: clamped, no panic
		{"glrtr-abcdefghijklmnop", "abcdefghi"},
		{"glcbt-abcdefghijklmnop", "abcdefghi"},
		{"glcbt-ab", "ab"},
		{"GR1348941abcdefghijklmnop", "GR1348941abcdefgh"},
		{"GR1348941abcdefg", "GR134894"}, // 16 characters: not long enough for the GR form
		{"GRzz48941abcdefghijklmnop", "GRzz4894"},
		{"GR13A8f41abcdefghijklmnop", "GR13A8f41abcdefgh"},
	}
	for _, tt := range tests {
		if got := ShortToken(tt.token); got != tt.want {
			t.Errorf("ShortToken(%q) = %q, want %q", tt.token, got, tt.want)
		}
	}
}
