package simulate

import (
	"bytes"
	"strings"
	"testing"
	"time"
)

func TestReadTrace(t *testing.T) {
	tests := []struct {
		name, in string
		want     []Job
		err      string
	}{
		{name: "sorted on read", in: "arrival_s,duration_s\n10,5\n0.5,60\n",
			want: []Job{{500 * time.Millisecond, time.Minute}, {10 * time.Second, 5 * time.Second}}},
		{name: "comments and spaces", in: "arrival_s, duration_s\n# a comment\n1, 2\n", want: []Job{{time.Second, 2 * time.Second}}},
		{name: "empty", in: "", err: "empty trace"},
		{name: "wrong header", in: "a,b\n1,2\n", err: `t.csv:1: header "a,b": want "arrival_s,duration_s"`},
		{name: "no jobs", in: "arrival_s,duration_s\n", err: "no jobs"},
		{name: "negative", in: "arrival_s,duration_s\n1,2\n-1,3\n", err: `t.csv:3: arrival_s "-1": want a number of seconds >= 0`},
		{name: "not a number", in: "arrival_s,duration_s\n1,x\n", err: `t.csv:2: duration_s "x"`},
		{name: "three fields", in: "arrival_s,duration_s\n1,2,3\n", err: "t.csv:2: 3 fields"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ReadTrace(strings.NewReader(tt.in), "t.csv")
			if tt.err != "" {
				if err == nil || !strings.Contains(err.Error(), tt.err) {
					t.Fatalf("err %v, want it to contain %q", err, tt.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if len(got) != len(tt.want) {
				t.Fatalf("got %v, want %v", got, tt.want)
			}
			for i := range got {
				if got[i] != tt.want[i] {
					t.Fatalf("job %d: got %v, want %v", i, got[i], tt.want[i])
				}
			}
		})
	}
}

func TestGenerate(t *testing.T) {
	gen := func(o GenerateOptions) []byte {
		t.Helper()
		jobs, err := Generate(o)
		if err != nil {
			t.Fatal(err)
		}
		var b bytes.Buffer
		if err := WriteTrace(&b, jobs); err != nil {
			t.Fatal(err)
		}
		return b.Bytes()
	}
	a, b := gen(GenerateOptions{Seed: 7, Jobs: 3000}), gen(GenerateOptions{Seed: 7, Jobs: 3000})
	if !bytes.Equal(a, b) {
		t.Fatal("the same seed gave two different traces")
	}
	if bytes.Equal(a, gen(GenerateOptions{Seed: 8, Jobs: 3000})) {
		t.Fatal("different seeds gave the same trace")
	}
	jobs, err := ReadTrace(bytes.NewReader(a), "gen")
	if err != nil {
		t.Fatalf("the generated trace does not read back: %v", err)
	}
	if len(jobs) != 3000 {
		t.Fatalf("%d jobs, want 3000", len(jobs))
	}
	// Diurnal: the working day (9–18h) carries far more arrivals than the night (0–6h).
	var day, night int
	var durs []float64
	for _, j := range jobs {
		switch h := j.Arrival.Hours(); {
		case h >= 9 && h < 18:
			day++
		case h < 6:
			night++
		}
		durs = append(durs, j.Duration.Seconds())
		if j.Arrival < 0 || j.Arrival >= 24*time.Hour || j.Duration < time.Second {
			t.Fatalf("job out of range: %+v", j)
		}
	}
	if day < 5*night {
		t.Fatalf("day %d vs night %d arrivals: want a diurnal shape", day, night)
	}
	// Fan-out: many jobs share their arrival second with another job.
	same := 0
	for i := 1; i < len(jobs); i++ {
		if jobs[i].Arrival-jobs[i-1].Arrival < 3*time.Second {
			same++
		}
	}
	if same < len(jobs)/2 {
		t.Fatalf("only %d of %d jobs arrive within 3s of the previous one: want fan-out bursts", same, len(jobs))
	}
	// Weekends are lighter.
	week, err := Generate(GenerateOptions{Seed: 1, Jobs: 7000, Days: 7})
	if err != nil {
		t.Fatal(err)
	}
	perDay := make([]int, 7)
	for _, j := range week {
		perDay[int(j.Arrival.Hours()/24)]++
	}
	if perDay[5]*2 > perDay[2] || perDay[6]*2 > perDay[2] {
		t.Fatalf("jobs per day %v: want light weekends", perDay)
	}
	for _, bad := range []GenerateOptions{{Jobs: -1}, {Days: -2}, {MeanFanout: 0.5}, {MedianDuration: time.Hour, DurationP99: time.Minute}} {
		if _, err := Generate(bad); err == nil {
			t.Errorf("Generate(%+v): want an error", bad)
		}
	}
}
