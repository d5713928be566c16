package runcmd

import (
	"context"
	"fmt"
	"io"

	"github.com/flotilla-ci/flotilla/host/jobs"
	"github.com/flotilla-ci/flotilla/host/jobs/gitlab"
)

// gitlabArtifacts uploads the artifacts a GitLab job collects (the shared runtime
// packs them on the instance, leaving out what exclude matches) to GitLab, each in
// the format the payload asks for. Upload problems are warnings in the job log; they
// do not change the job's outcome, as with GitLab Runner.
type gitlabArtifacts struct {
	client *gitlab.Client
	job    *gitlab.Job
}

// Store uploads one artifacts entry.
func (g *gitlabArtifacts) Store(ctx context.Context, a jobs.Artifact, archive io.Reader, log io.Writer) error {
	tgz, err := io.ReadAll(archive)
	if err != nil {
		return fmt.Errorf("read collected artifacts: %w", err)
	}
	return g.client.UploadJobArtifacts(ctx, g.job, a, tgz, log)
}
