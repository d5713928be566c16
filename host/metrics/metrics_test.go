package metrics

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"sort"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/flotilla-ci/flotilla/host/taskscaler"
	"github.com/flotilla-ci/flotilla/host/taskscaler/clock"
	"github.com/flotilla-ci/flotilla/sdk/fake"
)

// gather returns every sample as "name{label=value,…}" → value (histograms: count).
func gather(t *testing.T, reg *prometheus.Registry) map[string]float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]float64{}
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			var labels []string
			for _, lp := range m.GetLabel() {
				if lp.GetName() == "runner" {
					continue
				}
				labels = append(labels, lp.GetName()+"="+lp.GetValue())
			}
			sort.Strings(labels)
			key := mf.GetName() + fmt.Sprint(labels)
			switch mf.GetType() {
			case dto.MetricType_GAUGE:
				out[key] = m.GetGauge().GetValue()
			case dto.MetricType_COUNTER:
				out[key] = m.GetCounter().GetValue()
			case dto.MetricType_HISTOGRAM:
				out[key] = float64(m.GetHistogram().GetSampleCount())
			}
		}
	}
	return out
}

func TestScalerFeedsGitLabMetricNames(t *testing.T) {
	c := New(prometheus.Labels{"runner": "abc123"}, Buckets{})
	reg := prometheus.NewRegistry()
	reg.MustRegister(c)
	clk := clock.NewFake(time.Date(2026, 1, 5, 10, 0, 0, 0, time.UTC))
	g := fake.New(fake.Options{})
	s, err := taskscaler.New(context.Background(), g, taskscaler.Options{Manual: true, Clock: clk, Metrics: c,
		CapacityPerInstance: 2, MaxInstances: 5, MaxUseCount: 10,
		Logger:   slog.New(slog.NewTextHandler(io.Discard, nil)),
		Policies: []taskscaler.Policy{{IdleCount: 2, IdleTime: time.Minute}}})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	for range 2 {
		if err := s.Reconcile(ctx); err != nil {
			t.Fatal(err)
		}
	}
	a, err := s.Acquire(ctx, "job1")
	if err != nil {
		t.Fatal(err)
	}
	g.FailNext("Update", fmt.Errorf("API down"))
	_ = s.Reconcile(ctx)
	if err := s.Reconcile(ctx); err != nil {
		t.Fatal(err)
	}
	s.Release(a.Key())
	got := gather(t, reg)
	want := map[string]float64{
		"fleeting_taskscaler_tasks[state=acquired]":                                1,
		"fleeting_taskscaler_tasks[state=idle]":                                    3,
		"fleeting_taskscaler_max_tasks_per_instance[]":                             2,
		"fleeting_taskscaler_max_use_count_per_instance[]":                         10,
		"fleeting_taskscaler_desired_instances[]":                                  2,
		"fleeting_taskscaler_task_operations_total[operation=acquire]":             1,
		"fleeting_taskscaler_task_operations_total[operation=release]":             1,
		"fleeting_taskscaler_scale_operations_total[operation=up]":                 2,
		"fleeting_provisioner_instances[state=running]":                            2,
		"fleeting_provisioner_max_instances[]":                                     5,
		"fleeting_provisioner_missed_updates_total[]":                              1,
		"fleeting_provisioner_instance_operations_total[operation=create]":         2,
		"fleeting_provisioner_internal_operations_total[operation=increase]":       2,
		"fleeting_provisioner_internal_operations_total[operation=update_failure]": 1,
		"fleeting_provisioner_instance_creation_time_seconds[]":                    2,
		"fleeting_provisioner_instance_is_running_time_seconds[]":                  2,
		"fleeting_taskscaler_task_instance_readiness_time_seconds[]":               2,
	}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("%s = %v, want %v", k, got[k], v)
		}
	}
	if t.Failed() {
		t.Logf("all: %v", got)
	}
}

func TestBucketFallback(t *testing.T) {
	cases := []struct {
		v, fb, def, want []float64
	}{
		{nil, nil, []float64{1}, []float64{1}},
		{nil, []float64{2}, []float64{1}, []float64{2}},
		{[]float64{3}, []float64{2}, []float64{1}, []float64{3}},
	}
	for _, c := range cases {
		if got := pick(c.v, c.fb, c.def); fmt.Sprint(got) != fmt.Sprint(c.want) {
			t.Errorf("pick(%v,%v,%v) = %v, want %v", c.v, c.fb, c.def, got, c.want)
		}
	}
}
