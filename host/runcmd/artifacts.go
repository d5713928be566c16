package runcmd

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"sync"

	"github.com/flotilla-ci/flotilla/host/executors"
	"github.com/flotilla-ci/flotilla/host/jobs/gitlab"
)

// artifactsEnv wraps a GitLab job's executor environment so that, before the
// environment is cleaned up, the job's declared artifact paths are collected from the
// instance (a tar stream over the executor's own connection) and uploaded to GitLab.
// Upload problems are written to the job log; they do not change the job's outcome.
type artifactsEnv struct {
	executors.Env
	client *gitlab.Client
	job    *gitlab.Job
	// log receives the upload's messages (the job's trace).
	log io.Writer

	mu     sync.Mutex
	first  bool
	passed bool
}

// Exec runs a script and remembers whether the job's main script passed, which
// decides the artifacts' `when`.
func (e *artifactsEnv) Exec(ctx context.Context, s executors.Script, out io.Writer) (int, error) {
	code, err := e.Env.Exec(ctx, s, out)
	e.mu.Lock()
	if !e.first {
		e.first = true
		e.passed = code == 0 && err == nil && ctx.Err() == nil
	}
	e.mu.Unlock()
	return code, err
}

// Cleanup collects and uploads the artifacts, then cleans up.
func (e *artifactsEnv) Cleanup(ctx context.Context) error {
	e.mu.Lock()
	ran, passed := e.first, e.passed
	e.mu.Unlock()
	if ran {
		for i, a := range e.job.Artifacts {
			if !wanted(a.When, passed) || len(a.Paths) == 0 {
				continue
			}
			fmt.Fprintf(e.log, "\x1b[32;1mUploading artifacts...\x1b[0;m\n")
			if err := e.upload(ctx, i); err != nil {
				fmt.Fprintf(e.log, "\x1b[0;33mWARNING: Uploading artifacts failed: %v\x1b[0;m\n", err)
				continue
			}
		}
	}
	return e.Env.Cleanup(ctx)
}

func wanted(when string, passed bool) bool {
	switch when {
	case "always":
		return true
	case "on_failure":
		return !passed
	}
	return passed
}

func (e *artifactsEnv) upload(ctx context.Context, i int) error {
	a := e.job.Artifacts[i]
	var tgz bytes.Buffer
	if err := e.Env.Pack(ctx, a.Paths, &tgz, &warnings{w: e.log}); err != nil {
		return fmt.Errorf("collect %v: %w", a.Paths, err)
	}
	if tgz.Len() == 0 {
		fmt.Fprintf(e.log, "\x1b[0;33mWARNING: no files to upload\x1b[0;m\n")
		return nil
	}
	return e.client.UploadJobArtifacts(ctx, e.job, i, tgz.Bytes(), e.log)
}

// warnings writes each line it is given as a job-log warning.
type warnings struct {
	w   io.Writer
	buf []byte
}

func (w *warnings) Write(p []byte) (int, error) {
	w.buf = append(w.buf, p...)
	for {
		i := bytes.IndexByte(w.buf, '\n')
		if i < 0 {
			return len(p), nil
		}
		fmt.Fprintf(w.w, "\x1b[0;33mWARNING: %s\x1b[0;m\n", w.buf[:i])
		w.buf = w.buf[i+1:]
	}
}
