package dockerautoscaler

import (
	"context"
	"crypto/rand"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/moby/moby/client"

	"github.com/flotilla-ci/flotilla/host/executors"
	"github.com/flotilla-ci/flotilla/host/executors/dockertest"
	"github.com/flotilla-ci/flotilla/host/jobs"
)

// TestNoImageIsAnImageFailure: a job without an image on a runner without a default
// fails as image_pull_failure (not a system failure, which would be retried on a new
// instance), and the message says how to give one, --image included.
func TestNoImageIsAnImageFailure(t *testing.T) {
	local := dockertest.Client(t)
	job := jobs.Job{ID: "noimg", Script: []string{"true"}, Source: jobs.Source{Kind: jobs.SourceLocal, Dir: t.TempDir()}}
	res, log := runJob(t, local, &job, Options{}, executors.RunOptions{Executor: "docker-autoscaler"})
	if res.Status != executors.StatusFailed || res.FailureReason != executors.ImagePullFailure || res.SystemFailure() {
		t.Fatalf("result %+v\n%s", res, log)
	}
	for _, w := range []string{"names no image", "runner exec --image IMAGE", "[runners.docker]"} {
		if !strings.Contains(log, w) {
			t.Errorf("log lacks %q:\n%s", w, log)
		}
	}
}

// TestLoadedImageRunsWithoutRegistry: an image that exists only in a `docker save`
// archive on the runner host is loaded through the tunnel into the instance's Docker
// Engine and the job runs in it, with pull_policy always and no registry.
func TestLoadedImageRunsWithoutRegistry(t *testing.T) {
	local := dockertest.Client(t)
	dockertest.EnsureImage(t, local)
	ctx := context.Background()
	tag := "flotilla-test/offline:" + strings.ToLower(rand.Text()[:8])
	if _, err := local.ImageTag(ctx, client.ImageTagOptions{Source: dockertest.Image, Target: tag}); err != nil {
		t.Fatal(err)
	}
	untag := func() { local.ImageRemove(ctx, tag, client.ImageRemoveOptions{}) }
	t.Cleanup(untag)
	archive := filepath.Join(t.TempDir(), "offline.tar")
	saved, err := local.ImageSave(ctx, []string{tag})
	if err != nil {
		t.Fatal(err)
	}
	f, err := os.Create(archive)
	if err == nil {
		_, err = io.Copy(f, saved)
		f.Close()
	}
	saved.Close()
	if err != nil {
		t.Fatal(err)
	}
	untag() // the image is now only in the archive (and under its other name)

	_, cli := dockerOverTunnel(t)
	job := jobs.Job{ID: "offline", Script: []string{"echo ran offline"}, Image: jobs.Image{Name: tag},
		Source: jobs.Source{Kind: jobs.SourceLocal, Dir: t.TempDir()}}
	// Without the archive, pull_policy always must pull, and there is no such image.
	res, log := runJob(t, cli, &job, Options{PullPolicy: []string{PullAlways}}, executors.RunOptions{Executor: "docker-autoscaler"})
	if res.FailureReason != executors.ImagePullFailure || res.SystemFailure() {
		t.Fatalf("without the archive: result %+v, want image_pull_failure\n%s", res, log)
	}
	res, log = runJob(t, cli, &job, Options{PullPolicy: []string{PullAlways}, LoadImages: []string{archive}}, executors.RunOptions{Executor: "docker-autoscaler"})
	if res.Status != executors.StatusSuccess {
		t.Fatalf("result %+v\n%s", res, log)
	}
	for _, w := range []string{"Loaded " + tag + " from " + archive, "loaded from " + archive + " (not pulled)", "ran offline"} {
		if !strings.Contains(log, w) {
			t.Errorf("log lacks %q:\n%s", w, log)
		}
	}
	assertNothingLeft(t, local, job.ID)
}

// TestPullPolicies: the job's (or a service's) pull_policy replaces the runner's,
// within allowed_pull_policies, or the runner's pull_policy when that is unset.
func TestPullPolicies(t *testing.T) {
	tests := []struct {
		name                 string
		runner, job, allowed []string
		want                 []string
		wantErr              string
	}{
		{"default", nil, nil, nil, []string{PullAlways}, ""},
		{"runner's", []string{PullIfNotPresent}, nil, nil, []string{PullIfNotPresent}, ""},
		{"job's within the runner's", []string{PullAlways, PullIfNotPresent}, []string{PullIfNotPresent}, nil, []string{PullIfNotPresent}, ""},
		{"job's outside the runner's", []string{PullAlways}, []string{PullNever}, nil, nil, `the job's image pull_policy "never" is not allowed by the runner's [runners.docker] pull_policy`},
		{"job's within allowed", []string{PullAlways}, []string{PullNever}, []string{PullAlways, PullNever}, []string{PullNever}, ""},
		{"job's outside allowed", []string{PullAlways}, []string{PullIfNotPresent}, []string{PullAlways, PullNever}, nil, "allowed_pull_policies"},
		{"runner's outside allowed", []string{PullIfNotPresent}, nil, []string{PullAlways}, nil, "not in [runners.docker] allowed_pull_policies"},
		{"unknown", nil, []string{"sometimes"}, nil, nil, `pull_policy "sometimes" is not one of`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := pullPolicies(tt.runner, tt.job, tt.allowed)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want %q", err, tt.wantErr)
				}
				return
			}
			if err != nil || !slices.Equal(got, tt.want) {
				t.Errorf("= %v, %v; want %v", got, err, tt.want)
			}
		})
	}
}
