// Package all registers every IQA metric of the module with reward.Open:
// import it blank to open any metric by its pyiqa name.
//
//	import _ "github.com/dp2osr/dp2o/reward/all"
package all

import (
	// Each metric package registers its metrics in init.
	_ "github.com/dp2osr/dp2o/reward/afine"
	_ "github.com/dp2osr/dp2o/reward/clipiqa"
	_ "github.com/dp2osr/dp2o/reward/lpips"
	_ "github.com/dp2osr/dp2o/reward/maniqa"
	_ "github.com/dp2osr/dp2o/reward/musiq"
	_ "github.com/dp2osr/dp2o/reward/qalign"
	_ "github.com/dp2osr/dp2o/reward/topiq"
)
