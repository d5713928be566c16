package pool

// The executors a pool can run jobs with: each registers its executors.Kind when
// imported. A new executor is one more line here.
import (
	_ "github.com/flotilla-ci/flotilla/host/executors/dockerautoscaler"
	_ "github.com/flotilla-ci/flotilla/host/executors/instance"
)
