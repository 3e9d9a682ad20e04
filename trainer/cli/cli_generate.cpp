// qtrain generate: being built in this session (issue 10).
#include "data/error.h"
#include "trainer/cli/cli.h"

namespace qtrain::cli {

int run_generate(const std::vector<std::string>&) { throw UsageError("qtrain generate is not built yet"); }

}  // namespace qtrain::cli
