// talus: the command line client of the Talus REST API (see TalusCLI).
import Foundation
import TalusCLI

exit(await TalusCLIMain.run())
