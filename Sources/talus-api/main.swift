// talus-api: the Talus REST API (see TalusAPI).
import TalusAPI

await TalusAPICommand.runMain()
