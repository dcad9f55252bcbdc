module github.com/scale-autoscaler/scale/tests/e2e

go 1.26.0
